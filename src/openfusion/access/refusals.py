"""Refused authentications in the log: who was refused and why, never anything that narrows a presented key down."""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from openfusion.access.brake import counted_as

log = logging.getLogger("openfusion.access")

# A wrong key is worth an operator's look (a client with a revoked key, someone guessing); a missing one is routine
# (a browser asks for the /activity pages without credentials first).
_LEVELS = {"missing": logging.INFO, "malformed": logging.WARNING, "unknown": logging.WARNING}


# Refusals without a key (`missing`, `malformed`) cost a client nothing and are never braked: from one address, one
# is logged per window; over all addresses, a burst and then one a second. The others are only counted (the metric),
# and the next line logged says how many were left out, so a flood of them cannot flood the log.
QUIET_WINDOW_S = 60.0
KEYLESS_BURST = 20
KEYLESS_PER_S = 1.0
# Addresses whose last keyless refusal is remembered; past it the quietest are forgotten (logged again, within the
# overall rate).
QUIET_ADDRESSES = 4096
_KEYLESS = frozenset({"missing", "malformed"})


class RefusalLog:
    """Logs refused authentications; a wrong key is named by a fingerprint under `key` (the server's, or made here)."""

    def __init__(self, *, key: bytes | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        # Keyed, so a fingerprint cannot be looked up from a list of likely values (a password typed into the wrong
        # box is no random key); the same wrong key has the same fingerprint under one key (every worker of a server,
        # every replica given OPENFUSION_FINGERPRINT_KEY), so a client sending one stale key is told from one sending
        # many guesses.
        self._key = key or secrets.token_bytes(16)
        self._keyless = _Quieter(clock=clock)

    def fingerprint(self, presented: str) -> str:
        """Eight hex digits of a keyed BLAKE2b of the presented key."""
        return hashlib.blake2b(presented.encode("utf-8"), digest_size=4, key=self._key).hexdigest()

    def refused(self, reason: str, *, address: str | None, presented: str | None = None) -> None:
        """One refused authentication (`missing`, `malformed`, `unknown`), from `address`."""
        extra: dict[str, str | int] = {"reason": reason, "client_address": address or "unknown"}
        shown = note = ""
        if reason in _KEYLESS:
            if not self._keyless.admit(reason, address):
                return
            if self._keyless.left_out:
                extra["left_out"] = self._keyless.left_out
                note = f" ({self._keyless.left_out} more refusals without a key not logged since the last)"
                self._keyless.left_out = 0
        if presented:
            extra["key_fingerprint"] = self.fingerprint(presented)
            shown = f" (fingerprint {extra['key_fingerprint']})"
        log.log(
            _LEVELS[reason],
            "authentication refused: %s key%s from %s%s",
            reason,
            shown,
            extra["client_address"],
            note,
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


class _Quieter:
    """Which refusals without a key are logged: one per address per window, and a bounded number overall."""

    def __init__(self, *, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last: OrderedDict[str, float] = OrderedDict()  # reason and address -> when its last line was logged
        self._tokens = float(KEYLESS_BURST)
        self._filled_at = clock()
        self.left_out = 0  # refusals not logged since the last line

    def admit(self, reason: str, address: str | None) -> bool:
        """Whether to log this refusal for `reason` (else it is counted in `left_out`)."""
        now = self._clock()
        self._tokens = min(float(KEYLESS_BURST), self._tokens + (now - self._filled_at) * KEYLESS_PER_S)
        self._filled_at = now
        who = f"{reason} {counted_as(address) if address is not None else ''}"
        last = self._last.get(who)
        if (last is not None and now - last < QUIET_WINDOW_S) or self._tokens < 1:
            self.left_out += 1
            return False
        self._tokens -= 1
        self._last.pop(who, None)
        self._last[who] = now
        while len(self._last) > QUIET_ADDRESSES:
            self._last.popitem(last=False)
        return True
