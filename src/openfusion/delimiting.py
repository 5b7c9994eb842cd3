"""Untrusted text inside our prompt delimiters, encoded so it can neither open nor close one, however spelled.

Panel answers, the conversation, the analysis, fetched pages, search results and titles are put
between tags such as `<response model="...">` and `</response>`. A model reads tags loosely: with
spaces (`</ response>`), in any case, with invisible characters (`<\u200b/response>`), full-width
(`＜/response＞`), as look-alike letters (Cyrillic `о`), or as an escape a reader might decode
(`&lt;/response&gt;`). So every `<`, in any of those spellings, that begins one of our tag names
read that loosely becomes `&lt;`. Any other `<` is left alone: code (`a < b`, `List<T>`, `<div>`)
reaches the models as written.
"""

from __future__ import annotations

import html
import re
import unicodedata
from urllib.parse import unquote

# Every tag openfusion wraps untrusted text in.
TAG_NAMES = ("response", "responses", "conversation", "message", "analysis", "sources", "untrusted_web_content")
ENCODED_OPENER = "&lt;"

# A `<` as text may spell it: the character and its look-alikes, then character references and escapes.
_OPENER_CHARACTERS = "<\uff1c\ufe64\u2039\u2329\u3008\u27e8\u276e\u29fc\u02c2\u1438"
_OPENER = re.compile(f"[{_OPENER_CHARACTERS}]" r"|&(?:lt|#0*60|#x0*3c);?|\\(?:u003c|x3c|074)|%3c", re.IGNORECASE)
# The first character of every spelling above. Looking for each with `in` (a memchr-like scan) costs
# ~1-3 µs whatever the text's length; the pattern's scan costs ~13 ns per character (24 µs for a 2 KB
# answer), and most panel answers, conversations and pages hold none of these.
_OPENER_STARTS = (*_OPENER_CHARACTERS, "&", "\\", "%")
# Those an ASCII text may hold (`str.isascii` is known without a scan): four scans instead of fourteen.
_ASCII_OPENER_STARTS = tuple(start for start in _OPENER_STARTS if start.isascii())
# How far after a `<` a tag name is looked for (it may be padded with spaces and invisible characters).
_WINDOW = 128
# Characters a reader skips inside or before a tag name: separators, slashes (a closing tag), escapes.
_SKIPPED = frozenset(" _-.\\/\u2044\u2215\u29f8·")
_SKIPPED_CATEGORIES = frozenset({"Cf", "Mn", "Me", "Mc", "Zs", "Zl", "Zp", "Cc"})
# What a reader may take a character for, beyond what Unicode normalisation says: each entry is a
# character, then the letters it passes for (look-alikes are matched lower-cased).
_LOOKALIKE_TABLE = """
    аa еe оo рp сc уy хx ѕs іi јj ԁd ӏl һh ԛq ԝw кk мm тt вb нh гr пn
    αa βb εe ηhn ιil κk μmu νnv οo ρp ςsc σo τt υuv χx ωw
    ʀr ᴇe ꜱs ᴘp ᴏo ɴn ᴄc ᴠv ᴀa ᴛt ɪi ᴍm ɢg ʟl ʏy ᴜu ᴡw ʙb ᴅd ᴋk ᴊj ᴢz
    0o 1il 3e 4a 5s 7t 8b 9g $s @a |il !il
"""  # Cyrillic, Greek, small capitals, then digits and signs
_LOOKALIKES = {entry[0]: entry[1:] for entry in _LOOKALIKE_TABLE.split()}
_SKELETONS = tuple(sorted({name.replace("_", "") for name in TAG_NAMES}))


def encode_untrusted(text: str) -> str:
    """`text` with every `<` (however spelled) that could open or close one of our tags replaced by `&lt;`."""
    if not any(map(text.__contains__, _ASCII_OPENER_STARTS if text.isascii() else _OPENER_STARTS)):
        return text
    return _OPENER.sub(_encoded, text)


def _encoded(match: re.Match[str]) -> str:
    first = _FIRST_VISIBLE.match(match.string, match.end())
    if first is not None and first.group(1) not in _MAY_BEGIN:  # most `<` in code: `a < b`, `<=`, `<div>`
        return match.group()
    window = match.string[match.end() : match.end() + _WINDOW]
    return ENCODED_OPENER if _begins_a_tag_name(window) else match.group()


def _begins_a_tag_name(window: str) -> bool:
    """Whether `window`, read as loosely as a model might, starts with one of our tag names."""
    if "&" in window or "%" in window:
        window = html.unescape(unquote(window))
    candidates = _SKELETONS
    position = 0
    for char in window:
        letters = _letters(char)
        if letters is None:  # nothing a reader would see: keep looking
            continue
        candidates = tuple(
            name for name in candidates if position < len(name) and not letters.isdisjoint(name[position])
        )
        position += 1
        if not candidates:
            return False
        if any(len(name) == position for name in candidates):
            return True
    return False


def _letters(char: str) -> frozenset[str] | None:
    """The Latin letters a reader may take `char` for (empty: none, so the name ends there); None: skipped."""
    if char in _SKIPPED or char.isspace() or unicodedata.category(char) in _SKIPPED_CATEGORIES:
        return None
    # Compatibility decomposition (full-width, mathematical, circled letters), accents dropped, case folded.
    base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c)).casefold()
    if len(base) != 1:  # an expansion (a ligature, ß): no tag name of ours is spelled that way
        return frozenset()
    if base in _SKIPPED:  # a full-width solidus or low line
        return None
    letters = _LOOKALIKES.get(base, base)
    return frozenset(c for c in letters if "a" <= c <= "z")


_FIRST_VISIBLE = re.compile(r"[ \t\r\n]*([\x21-\x7e])")
# The printable ASCII characters that may come first in a spelling of one of our names (or be skipped).
_MAY_BEGIN = frozenset(
    char
    for char in map(chr, range(0x21, 0x7F))
    if char in "&%" or (letters := _letters(char)) is None or letters & {name[0] for name in _SKELETONS}
)
