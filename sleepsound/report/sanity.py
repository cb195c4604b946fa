"""Warnings a run's figures carry before anyone trusts them.

A head that always answers one class scores kappa 0 and a macro-F1 at the majority baseline's,
and figures from one or two held-out nights move by tens of points with which nights they are:
both used to be printed without comment, as if they were results.
"""

from __future__ import annotations

import math
from typing import Any

# Below these a head is no better than answering the training majority class every time.
MIN_KAPPA = 0.05
MIN_MACRO_F1_GAIN = 0.01
# Fewer held-out nights than this: the figures are anecdotes (and AHI's Pearson r is undefined).
MIN_NIGHTS = 3


def sanity_warnings(headline: dict[str, Any]) -> list[str]:
    """Plain sentences for a run's headline figures (``report.outputs`` ``metrics``); empty when none apply."""
    out: list[str] = []
    f1, base, kappa = (headline.get(k, math.nan) for k in ("macro_f1", "baseline_macro_f1", "kappa"))
    if not _finite(f1):
        return out
    if kappa < MIN_KAPPA or (_finite(base) and f1 <= base + MIN_MACRO_F1_GAIN):
        out.append(
            f"the stage3 head is no better than always answering the training majority class (kappa "
            f"{kappa:.2f}, macro-F1 {f1:.3f} against {base:.3f}): do not use its stages; train on more "
            "labelled nights"
        )
    nights = headline.get("held_out_nights")
    if isinstance(nights, int) and 0 < nights < MIN_NIGHTS:
        out.append(
            f"the held-out figures rest on {nights} night{'s' if nights > 1 else ''}: they move by tens of "
            f"points with which nights those are, and AHI agreement needs at least {MIN_NIGHTS}"
        )
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
