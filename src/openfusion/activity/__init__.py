"""Activity: every request's generation and upstream calls, recorded off the hot path, with their cost."""

from openfusion.activity.config import ActivitySettings
from openfusion.activity.cost import ModelPrice, PriceTable, prices_from_listing, total_cost
from openfusion.activity.records import (
    ActivityEntry,
    ActivityPage,
    ApiType,
    CallRecord,
    EntryRows,
    GenerationRecord,
    PanelText,
    Tokens,
    Writable,
    utc_now,
)
from openfusion.activity.store import ActivityStore, DataRefused, StoreUnavailable, UnknownCursor, open_store
from openfusion.activity.writer import ActivityWriter, WriterStats

__all__ = [
    "ActivityEntry",
    "ActivityPage",
    "ActivitySettings",
    "ActivityStore",
    "ActivityWriter",
    "ApiType",
    "CallRecord",
    "DataRefused",
    "EntryRows",
    "GenerationRecord",
    "ModelPrice",
    "PanelText",
    "PriceTable",
    "StoreUnavailable",
    "Tokens",
    "UnknownCursor",
    "Writable",
    "WriterStats",
    "open_store",
    "prices_from_listing",
    "total_cost",
    "utc_now",
]
