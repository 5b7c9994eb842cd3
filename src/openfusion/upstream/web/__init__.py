"""Web research for panelists: search backends, an SSRF-safe fetcher, and the web_search / web_fetch tools."""

from openfusion.upstream.web.config import FetchConfig, ResearchConfig, SearchConfig
from openfusion.upstream.web.errors import FetchError, FetchFailed, FetchRefused, SearchError, WebError
from openfusion.upstream.web.extract_pool import ExtractionPool
from openfusion.upstream.web.fetch import FetchedPage, Fetcher, build_fetch_client
from openfusion.upstream.web.fetch_slots import FetchSlots
from openfusion.upstream.web.search import SearchBackend, SearchResult, build_search_backend
from openfusion.upstream.web.tools import Source, ToolOutcome, WebResearch, normalize_tools

__all__ = [
    "ExtractionPool",
    "FetchConfig",
    "FetchError",
    "FetchFailed",
    "FetchRefused",
    "FetchSlots",
    "FetchedPage",
    "Fetcher",
    "ResearchConfig",
    "SearchBackend",
    "SearchConfig",
    "SearchError",
    "SearchResult",
    "Source",
    "ToolOutcome",
    "WebError",
    "WebResearch",
    "build_fetch_client",
    "build_search_backend",
    "normalize_tools",
]
