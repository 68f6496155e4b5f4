"""Published constructions shipped with the package (envs/data/*.json), so that `best_available` initial
states and the conformance tests work offline.

alphaevolve_constructions.json: a copy of google-deepmind/alphaevolve_results (CC-BY-4.0; source and licence
are inside the file). ttt_discover_reference.json: data from test-time-training/discover (MIT, Copyright (c)
2025 Mert Yuksekgonul; data only, values computed by that repository's verifiers): its best CP26 circles,
its 30,000-piece AC1 sequence and the 1,319-piece AC1 sequence its `best_available` runs start from.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

DATA = os.path.join(os.path.dirname(__file__), "data")
PATH = os.path.join(DATA, "alphaevolve_constructions.json")
TTT_PATH = os.path.join(DATA, "ttt_discover_reference.json")


@functools.lru_cache(maxsize=1)
def constructions() -> dict:
    with open(PATH) as f:
        return json.load(f)


@functools.lru_cache(maxsize=1)
def ttt_discover() -> dict:
    with open(TTT_PATH) as f:
        return json.load(f)


def published_value(key: str) -> float:
    for source in (constructions(), ttt_discover()):
        if key in source["published_values"]:
            return float(source["published_values"][key])
    raise KeyError(f"no published value {key!r}")


def circle_packing(n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(centers (n, 2), radii (n,)) of the AlphaEvolve packing of n circles, or None if none is published."""
    rows = constructions().get(f"circle_packing_{n}")
    if rows is None:
        return None
    arr = np.asarray(rows, dtype=np.float64)
    return arr[:, :2].copy(), arr[:, 2].copy()


def heights(key: str) -> np.ndarray:
    """A published step function: AlphaEvolve's 'ac1_step_heights', 'ac2_step_heights',
    'erdos_min_overlap_sequence', or TTT-Discover's 'ttt_discover_ac1_heights' (30,000 pieces) and
    'ac1_initial_state_heights_1319'."""
    for source in (constructions(), ttt_discover()):
        if key in source:
            return np.asarray(source[key], dtype=np.float64)
    raise KeyError(f"no published construction {key!r}")
