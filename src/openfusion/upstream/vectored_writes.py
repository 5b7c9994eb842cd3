"""A request's head and body handed to the transport as they are, in one vectored write, not joined first.

aiohttp writes a request's head together with the start of its body, through the transport's `writelines` when the
two come to 2 KiB or more, except on the Pythons where asyncio's own `writelines` could buffer without bound
(CVE-2024-12254: 3.12 before 3.12.9, 3.13 before 3.13.2), and on those before 3.12, where it did not help: there
aiohttp joins the two into a new bytes object and writes that. On Python 3.11 every upstream request was so copied
whole once more after its body was made: for a coding agent's conversation (~150 KB) spliced into five bodies a
fusion, five copies of ~0.17 M instructions each. On 3.11 asyncio's plain transports' `writelines` is that same
join, its TLS transport's is its `write` for each buffer, and uvloop's writes the buffers as they are (`writev`, or
each into the TLS stream) with the same back-pressure as its `write` (the protocol paused while the rest waits):
nothing the CVE is about.

aiohttp has no setting for it: `use_vectored_writes` clears the module's switch, and reports whether it could
(`tests/component/test_vectored_writes.py` fails if a new aiohttp moves it).
"""

from __future__ import annotations

import logging
import sys

from aiohttp import http_writer

log = logging.getLogger("openfusion.upstream")


def use_vectored_writes() -> bool:
    """Let aiohttp use the transport's `writelines` for a request's head and body on Python before 3.12, where
    asyncio's own is a join; True if it does so now."""
    if sys.version_info >= (3, 12):  # aiohttp's own choice: vectored where asyncio's writelines is safe
        return not getattr(http_writer, "SKIP_WRITELINES", True)
    if not isinstance(getattr(http_writer, "SKIP_WRITELINES", None), bool):
        log.debug("aiohttp's writer has no SKIP_WRITELINES switch: a request's head and body are joined")
        return False
    http_writer.SKIP_WRITELINES = False
    return True
