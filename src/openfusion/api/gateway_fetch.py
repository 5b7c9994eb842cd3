"""The edge's refusal of requests made by a gateway's own `web_fetch`.

An operator may let `web_fetch` reach intranet addresses (`allow_private`, `allow_hosts`); when those
cover the gateway itself, a prompt or a page could point a panelist at the gateway's own GET routes
(`/v1/activity` with other requests' records, `/metrics`, the activity pages) and read them as research.
Every fetch carries `Via: 1.1 openfusion-fetch` (upstream/web/fetch.py), and a request whose `Via`
names `openfusion-fetch` anywhere (any case, any entry of a list, any of several `Via` lines, behind a
proxy that added its own) is refused here before anything else reads it. No client needs to send it,
so the only one refused is a gateway's fetcher, or a client that asked to be.
"""

from __future__ import annotations

import re

from openfusion.errors import GatewayFetch

# The fetcher's name as a whole token of a Via value; a proxy named, say, `openfusion-fetcher` is not it. (ASCII rules:
# the header is read as latin-1, byte for byte, and a byte above 127 is no part of a token.)
_MARK = re.compile(r"(?<![\w.-])openfusion-fetch(?![\w.-])", re.IGNORECASE | re.ASCII)


def gateway_fetch(via: str) -> GatewayFetch | None:
    """The refusal of a request a gateway's `web_fetch` made (`via`: its `Via` lines, joined; the mark in any of
    them), or None for any other."""
    if via and _MARK.search(via):
        return GatewayFetch(
            "Requests made by a gateway's web_fetch are refused: a gateway's own pages are never research."
        )
    return None
