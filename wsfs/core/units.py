"""Sizes (``10G``, ``512M``, ``5%``) and durations (``90s``, ``24h``, ``7d``, ``never``).

Used by the control grammar and the config; pure.  Size suffixes are binary
(``1K`` = 1024 bytes), as ``dd``, ``truncate`` and ``du`` read them.
"""

from __future__ import annotations

import decimal
import re

_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?", re.IGNORECASE | re.ASCII)
MAX_SIZE = (1 << 63) - 1  # stored as a msgpack int; beyond any disk anyway
_SIZE_MULT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?", re.ASCII)
_DURATION_MULT = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """``"10G"`` -> 10737418240.  Raises ``ValueError`` with the text on anything else."""
    match = _SIZE_RE.fullmatch(str(text).strip())
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 512M, 10G, 1T or a byte count)")
    number, suffix = match.groups()
    mult = _SIZE_MULT[suffix.upper()]
    # Decimal, not float: exact above 2**53, and no OverflowError on a huge number.
    size = int(decimal.Decimal(number) * mult)
    if size > MAX_SIZE:
        raise ValueError(f"size too large: {str(text)[:40]!r}")
    return size


def parse_duration(text: str) -> float | None:
    """``"24h"`` -> 86400.0; ``"never"`` -> None.  Raises ``ValueError`` otherwise."""
    text = str(text).strip().lower()
    if text == "never":
        return None
    match = _DURATION_RE.fullmatch(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30m, 24h, 7d or never)")
    number, unit = match.groups()
    seconds = float(number) * _DURATION_MULT[unit]
    if seconds == float("inf"):  # hundreds of digits overflow a float
        raise ValueError(f"duration too large: {text[:40]!r}")
    return seconds


def format_size(n: int | float) -> str:
    """1536 -> ``1.5K``: short, for tables."""
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if abs(value) < 1024 or unit == "T":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float | None) -> str:
    """93784 -> ``1d2h``: short, for tables."""
    if seconds is None:
        return "never"
    seconds = int(max(seconds, 0))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            major, rest = divmod(seconds, size)
            minor = {"d": (rest // 3600, "h"), "h": (rest // 60, "m"), "m": (rest, "s")}[unit]
            return f"{major}{unit}{minor[0]}{minor[1]}" if minor[0] else f"{major}{unit}"
    return f"{seconds}s"
