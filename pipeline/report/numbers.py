"""How the report writes numbers: 3 significant figures, a latency with its p10-p90 spread, and a
speed-up with its interval, shown as within noise ("≈1") when that interval contains 1.

Latencies are medians over a few repeats; more digits than that would suggest a precision the
measurement does not have, and a ratio whose spread straddles 1 is no gain or loss at all.
"""

from __future__ import annotations

import math
from typing import Any

DIGITS = 3
NOISE = "≈1"


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def sig(value: Any, digits: int = DIGITS) -> str:
    """``value`` to ``digits`` significant figures, without an exponent between 1e-3 and 1e6
    (1234.5 -> "1234": integer digits are never rounded away); "-" when missing."""
    v = _number(value)
    if v is None:
        return "-"
    if v == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(v)))
    if not -3 <= magnitude < 6:
        return f"{v:.{digits - 1}e}"
    decimals = max(0, digits - 1 - magnitude)
    text = f"{round(v, decimals):.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def interval(lo: Any, hi: Any, digits: int = DIGITS) -> str:
    """ "1.1–1.4"; "-314 to 85.2" when an end is negative (a dash beside a minus sign misreads)."""
    joint = " to " if min(_number(lo) or 0, _number(hi) or 0) < 0 else "–"
    return f"{sig(lo, digits)}{joint}{sig(hi, digits)}"


def spread(median: Any, p10: Any, p90: Any, digits: int = DIGITS) -> str:
    """e.g. "12.3 (11.9–13)": the median and its p10–p90; the median alone when no spread is known."""
    if _number(median) is None:
        return "-"
    if _number(p10) is None or _number(p90) is None:
        return sig(median, digits)
    return f"{sig(median, digits)} ({interval(p10, p90, digits)})"


def ratio_interval(num: tuple[Any, Any], den: tuple[Any, Any]) -> tuple[float, float]:
    """The range of num/den when each lies in its (p10, p90): (num_lo/den_hi, num_hi/den_lo).
    Conservative (both ends at once), not a confidence interval; NaN where a figure is missing."""
    n_lo, n_hi, d_lo, d_hi = (_number(v) for v in (*num, *den))
    if None in (n_lo, n_hi, d_lo, d_hi) or not d_lo or not d_hi:
        return math.nan, math.nan
    return n_lo / d_hi, n_hi / d_lo


def within_noise(lo: Any, hi: Any) -> bool | None:
    """True when the interval contains 1; None when there is no interval."""
    lo, hi = _number(lo), _number(hi)
    if lo is None or hi is None:
        return None
    return lo <= 1.0 <= hi


def speedup(value: Any, lo: Any, hi: Any, digits: int = DIGITS) -> str:
    """e.g. "1.8 (1.6–2.1)", or "≈1 (0.95–1.3)" when the interval contains 1."""
    if _number(value) is None:
        return "-"
    if within_noise(lo, hi) is None:
        return sig(value, digits)
    head = NOISE if within_noise(lo, hi) else sig(value, digits)
    return f"{head} ({interval(lo, hi, digits)})"
