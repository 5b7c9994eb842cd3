"""SecretMasker: whole secrets and their prefixes, in text, bytes and streams cut anywhere."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openfusion.masking import MASK, LineMask, SecretMasker

PROVIDER = "sk-proj-Q7vX2mN9pL4kR8sT1wY6zA3bC5dE0fGh"
SEARCH = "BSAk2x9Lq7Vn4Zp8Rt1Wy6"
CLIENT = "of-client-d41d8cd98f00b204e980"
SECRETS = (PROVIDER, SEARCH, CLIENT)
MASKER = SecretMasker(SECRETS)
# Fewer characters than this never count as a leak; the public head `sk-proj-` needs 4 more.
SHORTEST = {PROVIDER: len("sk-proj-") + 4, SEARCH: 8, CLIENT: len("of-client-") + 4}
HYPOTHESIS = settings(database=None, deadline=None, max_examples=300)


def leaks(text: str) -> list[str]:
    """Every secret of which a prefix long enough to count appears in `text`."""
    return [secret for secret in SECRETS if secret[: SHORTEST[secret]] in text]


def test_a_secret_anywhere_is_masked_in_text_and_bytes() -> None:
    text = f'{{"error": {{"message": "Incorrect API key {PROVIDER}; search {SEARCH}, client {CLIENT}."}}}}'
    assert MASKER.text(text) == '{"error": {"message": "Incorrect API key ***; search ***, client ***."}}'
    assert MASKER.bytes(text.encode()) == MASKER.text(text).encode()


@pytest.mark.parametrize("cut", range(len(PROVIDER) + 1))
def test_a_truncated_key_is_masked_once_its_private_part_shows(cut: int) -> None:
    text = "padding " + PROVIDER[:cut]
    masked = MASKER.text(text)
    if cut >= SHORTEST[PROVIDER]:
        assert masked == "padding ***"
    else:
        assert masked == text  # `sk-proj-` and a few characters say nothing of the key: text stays readable


def test_public_heads_and_short_values_are_left_alone() -> None:
    text = "OpenAI keys start with sk-proj-, Anthropic's with sk-ant-api03-."
    assert MASKER.text(text) == text
    assert not SecretMasker(["short", "", None, "  "])  # too weak to be keys: nothing to mask
    assert SecretMasker(["short"]).text("a short text") == "a short text"


def test_json_escaped_spellings_are_masked_too() -> None:
    slashed = "azure/Key+With/Slashes=="
    masker = SecretMasker([slashed])
    body = orjson.dumps({"message": f"bad key {slashed}"}).replace(b"/", b"\\/")
    assert slashed.encode() not in orjson.loads(masker.bytes(body))["message"].encode()
    assert orjson.loads(masker.bytes(body)) == {"message": "bad key ***"}


def test_a_key_that_starts_inside_another_is_masked_whole() -> None:
    first, second = "Q1w2E3r4t5Y6u7", "t5Y6u7I8o9P0a1s2"  # the end of the first is the start of the second
    assert SecretMasker([first, second]).text(f"[{first}I8o9P0a1s2]") == "[***]"


def test_hundreds_of_secrets_are_all_masked() -> None:
    keys = [f"of-client-{n:04d}-{'k' * 12}" for n in range(300)]
    masker = SecretMasker(keys)
    text = " ".join(f"key {key}!" for key in keys[::7])
    assert masker.text(text) == " ".join("key ***!" for _ in keys[::7])


def test_without_secrets_the_same_object_comes_back() -> None:
    data = b"data: {}\n\n"
    assert SecretMasker().bytes(data) is data
    assert MASKER.bytes(data) is data


async def _collect(masker: SecretMasker, pieces: list[bytes], *, fail: bool = False) -> tuple[list[bytes], bool]:
    async def source() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece
        if fail:
            raise ConnectionResetError("cut")

    out: list[bytes] = []
    failed = False
    try:
        async for chunk in masker.lines(source()):
            out.append(chunk)
    except ConnectionResetError:
        failed = True
    return out, failed


def _cuts(data: bytes, offsets: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(o % (len(data) + 1) for o in offsets)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@HYPOTHESIS
@given(
    before=st.text(max_size=200),
    after=st.text(max_size=200),
    secret=st.sampled_from(SECRETS),
    keep=st.integers(min_value=0, max_value=60),
    offsets=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_a_stream_cut_anywhere_never_leaks_a_secret(
    before: str, after: str, secret: str, keep: int, offsets: list[int]
) -> None:
    # An SSE event quoting the key (or a provider's truncated quote of it), the stream cut at random bytes.
    quoted = secret[: max(keep, 1)]
    event = orjson.dumps({"error": {"message": f"{before}{quoted}{after}"}})
    stream = b"data: " + event + b"\n\ndata: [DONE]\n\n"
    out, _ = asyncio.run(_collect(MASKER, _cuts(stream, offsets)))
    relayed = b"".join(out)
    assert not leaks(relayed.decode("utf-8", "replace"))
    # Whole lines only: every chunk but the last ends a line, and the events still parse.
    assert all(chunk.endswith((b"\n", b"\r")) for chunk in out[:-1])
    assert orjson.loads(relayed.split(b"\n\n")[0].removeprefix(b"data: "))["error"]["message"]


@HYPOTHESIS
@given(text=st.text(max_size=300), secret=st.sampled_from(SECRETS), position=st.integers(min_value=0, max_value=300))
def test_masking_before_a_cut_leaves_no_prefix(text: str, secret: str, position: int) -> None:
    # What the upstream client does with an error message: mask, then keep 1,000 (here: some) characters.
    message = text[:position] + secret + text[position:]
    for limit in range(0, len(message) + 1, 7):
        assert not leaks(MASKER.text(message)[:limit])
        assert MASKER.text(message[:limit]).count(secret[: SHORTEST[secret]]) == 0


def test_a_stream_that_breaks_mid_line_relays_what_came_masked() -> None:
    out, failed = asyncio.run(_collect(MASKER, [b"data: one\n\n", b"data: partial " + PROVIDER.encode()], fail=True))
    assert failed and out == [b"data: one\n\n", b"data: partial " + MASK.encode()]


def test_a_line_longer_than_the_hold_is_relayed_in_parts_without_splitting_a_key() -> None:
    filler = b"x" * (64 * 1024 - 10)
    line = filler + PROVIDER.encode() + b" and more" + b"y" * 70_000
    pieces = [line[i : i + 4096] for i in range(0, len(line), 4096)] + [b"\n"]
    out, _ = asyncio.run(_collect(MASKER, pieces))
    relayed = b"".join(out)
    assert relayed == filler + MASK.encode() + b" and more" + b"y" * 70_000 + b"\n"
    assert len(out) > 2  # not held whole until its end


LONGEST = max(len(secret) for secret in SECRETS)  # none has a character JSON escapes: each spelled as it is


@pytest.mark.parametrize(
    ("data", "cut"),
    [
        (b"", 0),
        (b"data: {}\n\n", 10),
        (b"data: {}\r\n\r\ndata: {", 12),  # the whole lines; the unfinished one waits
        (b"data: {}\r", 9),
        (b"data: {", 0),
        (b"data: key " + PROVIDER[:20].encode(), 0),  # the first read of a key split across two
        (b"data: one\n\ndata: key " + PROVIDER[:20].encode(), 11),
    ],
)
def test_line_cut_relays_whole_lines_and_holds_the_unfinished_one(data: bytes, cut: int) -> None:
    assert MASKER.line_cut(data) == cut
    assert SecretMasker().line_cut(data) == len(data)  # nothing to mask: nothing held


def test_line_cut_of_a_line_past_the_hold_keeps_back_only_what_a_key_could_start_in() -> None:
    long_line = b"data: " + b"x" * (64 * 1024)
    assert MASKER.line_cut(long_line) == len(long_line) - LONGEST  # no secret: only the last longest key's length
    assert MASKER.line_cut(long_line[:-LONGEST]) == 0  # within the hold: held whole
    quoted = long_line + PROVIDER[:20].encode()  # a key's prefix that may go on in the next read: held back whole
    assert MASKER.line_cut(quoted) == len(quoted) - LONGEST <= len(long_line)
    whole = b"data: one\n" + long_line + PROVIDER.encode() + b" and more"  # a whole key past the cut, before the end
    assert MASKER.line_cut(whole) == len(whole) - len(PROVIDER + " and more")


def test_a_key_split_across_two_reads_is_masked_whole() -> None:
    lines = LineMask(MASKER)
    first, rest = PROVIDER[:20].encode(), PROVIDER[20:].encode()
    assert lines.feed(b"data: one\n\ndata: key " + first) == b"data: one\n\n"
    assert lines.feed(rest + b"\n\ndata: two") == b"data: key ***\n\n"
    assert lines.end() == b"data: two"
    assert lines.end() == b""
