"""Strict JSON for people's tools: undefined figures as null, numpy numbers as numbers."""

from __future__ import annotations

import json

import numpy as np

from sleepsound.core.json_text import figures_json, json_text


def _strict(text: str) -> object:
    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_figures_from_numpy_become_numbers_and_undefined_ones_null() -> None:
    """``cv --json`` and the EMBC reproduction wrote bare NaN (a class never predicted) through
    ``json.dumps(default=float)``; jq and JSON.parse refuse it (audit of 2026-12-08)."""
    table = {"ppv": np.float32("nan"), "kappa": np.float64(0.5), "n": np.int64(3), "rows": [float("inf"), 1]}
    assert _strict(figures_json(table)) == {"ppv": None, "kappa": 0.5, "n": 3.0, "rows": [None, 1]}
    assert _strict(json_text({"x": float("nan")})) == {"x": None}
