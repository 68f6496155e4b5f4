"""Published constructions shipped with the package (envs/data/alphaevolve_constructions.json).

A copy of google-deepmind/alphaevolve_results (CC-BY-4.0; source and licence are inside the file), so that
`best_available` initial states and the conformance tests work offline.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

PATH = os.path.join(os.path.dirname(__file__), "data", "alphaevolve_constructions.json")


@functools.lru_cache(maxsize=1)
def constructions() -> dict:
    with open(PATH) as f:
        return json.load(f)


def published_value(key: str) -> float:
    return float(constructions()["published_values"][key])


def circle_packing(n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(centers (n, 2), radii (n,)) of the AlphaEvolve packing of n circles, or None if none is published."""
    rows = constructions().get(f"circle_packing_{n}")
    if rows is None:
        return None
    arr = np.asarray(rows, dtype=np.float64)
    return arr[:, :2].copy(), arr[:, 2].copy()


def heights(key: str) -> np.ndarray:
    """A published step function: 'ac1_step_heights', 'ac2_step_heights' or 'erdos_min_overlap_sequence'."""
    return np.asarray(constructions()[key], dtype=np.float64)
