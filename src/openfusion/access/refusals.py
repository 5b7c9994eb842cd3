"""Refused authentications in the log: who was refused and why, never anything that narrows a presented key down."""

from __future__ import annotations

import hashlib
import logging
import secrets

log = logging.getLogger("openfusion.access")

# A wrong key is worth an operator's look (a client with a revoked key, someone guessing); a missing one is routine
# (a browser asks for the /activity pages without credentials first).
_LEVELS = {"missing": logging.INFO, "malformed": logging.WARNING, "unknown": logging.WARNING}


class RefusalLog:
    """Logs refused authentications; a wrong key is named by a fingerprint under `key` (the server's, or made here)."""

    def __init__(self, *, key: bytes | None = None) -> None:
        # Keyed, so a fingerprint cannot be looked up from a list of likely values (a password typed into the wrong
        # box is no random key); the same wrong key has the same fingerprint under one key (every worker of a server,
        # every replica given OPENFUSION_FINGERPRINT_KEY), so a client sending one stale key is told from one sending
        # many guesses.
        self._key = key or secrets.token_bytes(16)

    def fingerprint(self, presented: str) -> str:
        """Eight hex digits of a keyed BLAKE2b of the presented key."""
        return hashlib.blake2b(presented.encode("utf-8"), digest_size=4, key=self._key).hexdigest()

    def refused(self, reason: str, *, address: str | None, presented: str | None = None) -> None:
        """One refused authentication (`missing`, `malformed`, `unknown`), from `address`."""
        extra: dict[str, str] = {"reason": reason, "client_address": address or "unknown"}
        shown = ""
        if presented:
            extra["key_fingerprint"] = self.fingerprint(presented)
            shown = f" (fingerprint {extra['key_fingerprint']})"
        log.log(
            _LEVELS[reason],
            "authentication refused: %s key%s from %s",
            reason,
            shown,
            extra["client_address"],
            extra=extra,
        )

    def braked(self, address: str, *, failures: int, window_s: float, block_s: float) -> None:
        """An address is refused from now on for `block_s`, after `failures` wrong keys within `window_s`."""
        log.warning(
            "authentication brake: %s refused for %g s after %d wrong keys within %g s",
            address,
            block_s,
            failures,
            window_s,
            extra={"reason": "braked", "client_address": address},
        )
