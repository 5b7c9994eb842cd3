"""Masking configured secrets (provider, search and client keys) in text that came from somewhere else."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterable

import orjson
from ahocorasick_rs import BytesAhoCorasick, MatchKind

MASK = "***"
# Shorter values are too weak to be keys, and masking them would mangle ordinary text.
MIN_SECRET_CHARS = 8
# How much of a secret must show before a prefix counts: at least this many characters...
MIN_PREFIX_CHARS = 8
# ...and this many past its public head: leading short segments such as `sk-`, `sk-proj-`, `sk-ant-api03-`.
MIN_PRIVATE_CHARS = 4
_PUBLIC_HEAD = re.compile(r"(?:[A-Za-z0-9]{1,7}[-_]){0,3}")
# A stream line longer than this is masked and relayed in parts rather than held whole.
_MAX_HELD_BYTES = 64 * 1024


class SecretMasker:
    """Replaces each configured secret, and any meaningful prefix of one, by `***`, in text or bytes.

    A prefix counts too because text is often cut short (an error message at 1,000 characters, a
    provider's own truncation): a cut through a key leaves its prefix. Mask before truncating.
    One Aho-Corasick pass over the bytes finds every secret's shortest counted prefix at once, so
    the cost does not grow with the number of secrets; with none configured nothing is scanned.
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        forms: dict[bytes, bytes] = {}  # every spelling to mask -> the shortest prefix of it that is masked
        for secret in secrets:
            value = (secret or "").strip()
            if len(value) < MIN_SECRET_CHARS:
                continue
            public = _PUBLIC_HEAD.match(value)
            head = len(public.group()) if public else 0
            shortest = min(len(value), max(MIN_PREFIX_CHARS, head + MIN_PRIVATE_CHARS))
            for spell in _SPELLINGS:
                form, prefix = spell(value).encode(), spell(value[:shortest]).encode()
                if len(prefix) < len(forms.get(form, form + b"+")):
                    forms[form] = prefix
        self._heads = sorted(set(forms.values()))
        self._forms = [[form for form, head in forms.items() if head == h] for h in self._heads]
        self._shortest = min((len(head) for head in self._heads), default=0)
        self._longest = max((len(form) for form in forms), default=0)
        # Standard match kind with overlapping matches: a head that starts inside another is still seen.
        self._automaton = BytesAhoCorasick(self._heads, matchkind=MatchKind.Standard) if self._heads else None

    def __bool__(self) -> bool:
        return self._automaton is not None

    def bytes(self, value: bytes) -> bytes:
        """`value` (UTF-8) with every secret, or counted prefix of one, replaced by `***` (the same object if none)."""
        if self._automaton is None or len(value) < self._shortest:
            return value
        found = self._automaton.find_matches_as_indexes(value, overlapping=True)
        if not found:
            return value
        parts: list[bytes] = []
        position = 0  # end of what is already copied or masked
        for index, start, _ in sorted(found, key=lambda match: match[1]):
            end = start + max(_common_prefix(value, start, form) for form in self._forms[index])
            if end <= position:
                continue
            parts += [value[position:start], MASK.encode()] if start >= position else []
            position = end
        parts.append(value[position:])
        return b"".join(parts)

    def text(self, value: str) -> str:
        """The same over text."""
        if self._automaton is None or len(value) < self._shortest // 4:  # a character is at most 4 bytes
            return value
        raw = value.encode("utf-8", "surrogatepass")
        masked = self.bytes(raw)
        return value if masked is raw else masked.decode("utf-8", "surrogatepass")

    async def lines(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Relay a byte stream masked line by line (an SSE event never splits a key across two masks).

        A chunk's unfinished last line waits for the rest of it; nothing else is held back.
        """
        if self._automaton is None:
            async for chunk in chunks:
                yield chunk
            return
        lines = LineMask(self)
        try:
            async for chunk in chunks:
                if masked := lines.feed(chunk):
                    yield masked
        except Exception:
            if held := lines.end():  # the stream broke off mid-line: relay what came, as an unmasked stream would have
                yield held
            raise
        if held := lines.end():
            yield held

    def line_cut(self, data: bytes) -> int:
        """How much of `data` (a stream's bytes not yet relayed) to mask and relay now, the rest held for the next read,
        so that no key is split between two masks: up to the end of its last line; of an unfinished line longer than
        `_MAX_HELD_BYTES`, all but its last longest-secret's length, or up to a secret's prefix that begins earlier and
        may go on past that. All of it when there is nothing to mask."""
        # A read that ends a line, as nearly every one of an SSE stream does, is relayed whole without a search.
        if self._automaton is None or data.endswith(b"\n"):
            return len(data)
        cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        if len(data) - cut > _MAX_HELD_BYTES:
            return self._safe_cut(data, len(data) - self._longest)
        return cut

    def _safe_cut(self, value: bytes, cut: int) -> int:
        """`cut`, moved back to the start of any secret's prefix that begins before it (and may go on past it)."""
        assert self._automaton is not None
        window = max(0, cut - self._longest)  # a secret that starts earlier ends before `cut`
        found = self._automaton.find_matches_as_indexes(value[window:], overlapping=True)
        return min([cut, *(window + start for _, start, _ in found if window + start < cut)])


def _json_escaped(value: str) -> str:
    return orjson.dumps(value).decode()[1:-1]


# The secret as written, and as JSON may escape it (a provider quoting it in an error body); escaping is
# character by character, so the spelling of a prefix is a prefix of the spelling.
_SPELLINGS: tuple[Callable[[str], str], ...] = (
    lambda value: value,
    _json_escaped,
    lambda value: _json_escaped(value).replace("/", "\\/"),
)


def _common_prefix(value: bytes, start: int, form: bytes) -> int:
    """How many bytes of `form` appear in `value` from `start` on."""
    length = 0
    for mine, theirs in zip(value[start : start + len(form)], form, strict=False):
        if mine != theirs:
            break
        length += 1
    return length


class LineMask:
    """A byte stream masked line by line, fed by its caller's own loop (`SecretMasker.lines` as a plain object, so a
    relay masks with no generator level of its own: each costs a relayed read a resumption)."""

    __slots__ = ("_held", "_masker")

    def __init__(self, masker: SecretMasker) -> None:
        self._masker = masker
        self._held = b""  # the unfinished last line

    def feed(self, chunk: bytes) -> bytes:
        """The masked whole lines this chunk completes (b"" if none); a long unfinished line goes out in parts."""
        held = self._held
        data = held + chunk if held else chunk
        masker = self._masker
        cut = masker.line_cut(data)
        self._held = data[cut:]
        return masker.bytes(data[:cut]) if cut else b""

    def end(self) -> bytes:
        """What is held (an unfinished last line), masked: the stream's end, or where it broke off."""
        held, self._held = self._held, b""
        return self._masker.bytes(held) if held else b""
