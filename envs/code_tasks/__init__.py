"""Procedurally generated algorithmic problems with hidden tests (seed: axiom-rl's problem families)."""

from __future__ import annotations

import functools

from envs.code_tasks.basics import BASICS
from envs.code_tasks.family import Family, Problem, canonical, same_output
from envs.code_tasks.optimization import COINS, KNAPSACK
from envs.code_tasks.parsing import BRACKETS, RPN
from envs.code_tasks.sequences import EDIT, LCS, LIS
from envs.code_tasks.structures import INTERVALS, ISLANDS, QUEENS

ALGORITHMIC = (RPN, BRACKETS, EDIT, LIS, KNAPSACK, COINS, INTERVALS, QUEENS, LCS, ISLANDS)
FAMILIES: dict[str, Family] = {f.name: f for f in ALGORITHMIC + BASICS}
DEFAULT_FAMILIES = tuple(f.name for f in ALGORITHMIC)  # families=None; the entry-level BASICS are opt-in
BASIC_FAMILIES = tuple(f.name for f in BASICS)


@functools.lru_cache(maxsize=4096)
def problem(family: str, index: int, seed: int, n_tests: int) -> Problem:
    """Problem `index` of a family; the same arguments always give the same problem and hidden tests."""
    if family not in FAMILIES:
        raise ValueError(f"unknown code family {family!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[family].problem(index, seed, n_tests)


__all__ = ["BASIC_FAMILIES", "DEFAULT_FAMILIES", "FAMILIES", "Family", "Problem", "canonical", "problem", "same_output"]
