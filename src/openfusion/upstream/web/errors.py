"""The web research errors; every message is safe to show the model (no keys, nothing from a refused target)."""

from __future__ import annotations


class WebError(Exception):
    """Base of the web research errors; `message` is what the model is told."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SearchError(WebError):
    """The search backend could not answer (unreachable, timed out, HTTP error, unreadable response)."""


class FetchError(WebError):
    """A page could not be fetched."""


class FetchRefused(FetchError):
    """The URL or an address it resolves to is not allowed; nothing was sent to it."""


class FetchFailed(FetchError):
    """The fetch was allowed but failed: network error, timeout, HTTP error status or unusable content."""
