"""aiohttp hands a request's head and body to the transport as they are (see `upstream/vectored_writes.py`)."""

from __future__ import annotations

import sys

import pytest
from aiohttp import http_writer

from openfusion.upstream.vectored_writes import use_vectored_writes


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="aiohttp's own choice from Python 3.12 on")
def test_aiohttp_writes_a_request_through_writelines_once_switched() -> None:
    """Fails if a new aiohttp moves or renames the switch: requests of 2 KiB or more would be copied whole again."""
    assert use_vectored_writes() is True
    assert http_writer.SKIP_WRITELINES is False


def test_without_the_switch_aiohttps_own_writes_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(http_writer, "SKIP_WRITELINES")
    assert use_vectored_writes() is False
    assert not hasattr(http_writer, "SKIP_WRITELINES")
