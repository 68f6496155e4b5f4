"""The classical baseline for the number-list discovery tasks: random-perturbation hill climbing.

From the task's initial state, each verifier call scores one random neighbour of the current construction
(`env.perturb`: one item moved by Gaussian noise of `step` times the numbers' scale); a neighbour that is valid
and not worse becomes the current one (sideways moves let it cross plateaus, as a (1+1) evolution strategy does).
No language model is involved, so "discovery" can be measured against something that is not one, at the same
number of verifier calls.
"""

from __future__ import annotations

import numpy as np

from envs.number_answers import NumberListEnv


def hill_climb(env: NumberListEnv, calls: int, seed: int, step: float = 0.1) -> list[float]:
    """The best score after each of `calls` verifier calls (the task's own score, e.g. C1 or the sum of radii)."""
    rng = np.random.default_rng(seed)
    start = env.initial_states()[0]
    current, current_value, best = np.asarray(start.construction, dtype=np.float64).ravel(), start.value, start
    curve = []
    for _ in range(calls):
        proposal = env.perturb(current, rng, step)
        result = env.verify_construction(proposal)
        if result.ok and result.value >= current_value:
            current, current_value = proposal, result.value
            if result.value > best.value:
                best = result
        curve.append(best.score)
    return curve
