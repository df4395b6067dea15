"""Sizes and durations (units.py): parsing, formatting, errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsfs.core.units import format_duration, format_size, parse_duration, parse_size

K, M, G, T, P = (1 << 10), (1 << 20), (1 << 30), (1 << 40), (1 << 50)


@pytest.mark.parametrize("text, expected", [
    ("0", 0), ("1", 1), ("512", 512), ("1K", K), ("1k", K), ("10G", 10 * G), ("10g", 10 * G),
    ("512M", 512 * M), ("1T", T), ("2P", 2 * P), ("1KB", K), ("1KiB", K), ("1kib", K), ("3MB", 3 * M),
    ("5B", 5), ("1.5K", 1536), ("1.5M", 3 * M // 2), ("0.5", 0), ("2.75G", int(2.75 * G)), (" 10G ", 10 * G),
    ("10 G", 10 * G), ("007", 7), ("9007199254740993", 2 ** 53 + 1), (str(2 ** 63 - 1), 2 ** 63 - 1),
    (4096, 4096),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", [
    "", " ", "abc", "-1", "+1", "G", "1X", "1KK", "1.K", ".5K", "1e3", "1,5K", "1 K B", "10G10", "1Ki",
    "\u0661\u0662", "\uff11K", "inf", "nan", str(2 ** 63), "9" * 400, "9" * 400 + ".5", "8192P",
    "99999999999P", None,
])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert str(text)[:10] in str(info.value) or "size" in str(info.value)


@pytest.mark.parametrize("text, expected", [
    ("never", None), ("NEVER", None), (" never ", None),
    ("0", 0.0), ("0s", 0.0), ("90s", 90.0), ("90", 90.0), ("500ms", 0.5), ("30m", 1800.0), ("24h", 86400.0),
    ("7d", 7 * 86400.0), ("2w", 14 * 86400.0), ("1.5h", 5400.0), ("24H", 86400.0), ("10 m", 600.0),
])
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", [
    "", "forever", "-1s", "+1s", "1y", "h", "1.h", "1e3s", "1 day", "1hh", "1h30m", "\u0661s", "inf", "nan",
    "9" * 400 + "d", None,
])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("n, text", [
    (0, "0B"), (1, "1B"), (1023, "1023B"), (1024, "1.0K"), (1536, "1.5K"), (M, "1.0M"), (10 * G, "10.0G"),
    (T, "1.0T"), (P, "1024.0T"), (-2048, "-2.0K"), (1023.9, "1023B"),
])
def test_format_size(n, text):
    assert format_size(n) == text


@pytest.mark.parametrize("seconds, text", [
    (None, "never"), (0, "0s"), (59, "59s"), (59.9, "59s"), (60, "1m"), (61, "1m1s"), (3599, "59m59s"),
    (3600, "1h"), (3660, "1h1m"), (3601, "1h"), (86400, "1d"), (93784, "1d2h"), (90000, "1d1h"),
    (7 * 86400, "7d"), (-5, "0s"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2 ** 63 - 1))
def test_a_byte_count_parses_exactly(n):
    assert parse_size(str(n)) == n


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 8000), st.sampled_from(["", "K", "M", "G", "T", "P"]), st.sampled_from(["", "B", "iB"]))
def test_size_suffixes_are_binary(n, suffix, tail):
    tail = "" if not suffix and tail == "iB" else tail
    expected = n * {"": 1, "K": K, "M": M, "G": G, "T": T, "P": P}[suffix]
    if expected >= 2 ** 63:
        with pytest.raises(ValueError):
            parse_size(f"{n}{suffix}{tail}")
    else:
        assert parse_size(f"{n}{suffix}{tail}") == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10 ** 7), st.sampled_from([("s", 1), ("m", 60), ("h", 3600), ("d", 86400), ("w", 604800)]))
def test_duration_units(n, unit):
    assert parse_duration(f"{n}{unit[0]}") == n * unit[1]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10 ** 9))
def test_format_duration_drops_at_most_the_minor_unit(seconds):
    text = format_duration(seconds)
    total = 0
    number = ""
    for ch in text:
        if ch.isdigit():
            number += ch
        else:
            total += int(number) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[ch]
            number = ""
    assert total <= seconds
    if seconds >= 86400:
        assert seconds - total < 3600
    elif seconds >= 3600:
        assert seconds - total < 60
    else:
        assert seconds == total
