"""The result cache's table in the activity database (used when no Redis is configured).

One row per cached fusion run: its key (a digest of the normalised request and the client key's
tenant), the serialised run, its size, when it expires and when it was last read. Rows past their
expiry are never returned and are deleted as new ones come in; past the size limit the rows read
longest ago go first.
"""

from __future__ import annotations

CACHE_TABLE = "result_cache"

CACHE_EXPIRY_INDEX = f"CREATE INDEX result_cache_expiry ON {CACHE_TABLE} (expires_at)"
CACHE_EVICTION_INDEX = f"CREATE INDEX result_cache_last_used ON {CACHE_TABLE} (last_used)"


def result_cache_table(*, blob: str, real: str, integer: str) -> str:
    """The table, for one database's types (times are Unix seconds)."""
    return f"""
CREATE TABLE {CACHE_TABLE} (
    key TEXT PRIMARY KEY,
    created_at {real} NOT NULL,
    expires_at {real} NOT NULL,
    last_used {real} NOT NULL,
    size {integer} NOT NULL,
    entry {blob} NOT NULL
)"""


class CacheStatements:
    """The statements, for one placeholder style (`?` for sqlite3, `%s` for psycopg)."""

    def __init__(self, p: str) -> None:
        t = CACHE_TABLE
        self.get = f"SELECT entry, last_used FROM {t} WHERE key = {p} AND expires_at > {p}"
        # A read is also a use: it moves the row to the back of the eviction order.
        self.touch = f"UPDATE {t} SET last_used = {p} WHERE key = {p}"
        self.put = (
            f"INSERT INTO {t} (key, created_at, expires_at, last_used, size, entry) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}) "
            "ON CONFLICT (key) DO UPDATE SET created_at = excluded.created_at, expires_at = excluded.expires_at, "
            "last_used = excluded.last_used, size = excluded.size, entry = excluded.entry"
        )
        self.purge = f"DELETE FROM {t} WHERE expires_at <= {p}"
        # Keep the most recently used rows whose sizes add up to the limit; delete the rest.
        self.evict = (
            f"DELETE FROM {t} WHERE key IN (SELECT key FROM (SELECT key, SUM(size) OVER "
            f"(ORDER BY last_used DESC, key DESC) AS kept FROM {t}) AS ranked WHERE kept > {p})"
        )
        self.delete = f"DELETE FROM {t} WHERE key = {p}"
        self.usage = f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM {t}"
