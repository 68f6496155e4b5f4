"""Reward transforms: turn a task's verified score into the RL reward.

TTT-Discover's transforms (tasks/base_reward_task.py): linear (x), neg_linear (-x), exp(-x), inverse
1/(1e-8 + x) (Erdős: 1/C), scaled inverse 5/(1e-8 + x); and reciprocal 1/x exactly, the AC1 reward of its
env (recipes/ttt/env_ac.py::_compute_reward returns 1/C1, not the task's shaped score). Entropic advantages with adaptive beta are
invariant to positive affine reward maps, so only the monotone shape matters (TTT_DISCOVER.md §1).

Two optional extras, both off by default (TTT-Discover gives failures reward 0 and nothing else):
  * partial credit: a near-valid answer (e.g. circles that overlap by 1e-6) earns
    `weight * reward * max(0, 1 - violation / scale)`, strictly less than any valid answer would;
  * improvement over the parent: reward minus the reward the parent state's score would have earned.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

EPS = 1e-8
KINDS = ("linear", "neg_linear", "inverse", "scaled_inverse", "reciprocal", "exp_neg")


def transform(kind: str, score: float) -> float:
    """The reward for a score; non-finite results become 0 (the failure reward)."""
    if kind == "linear":
        r = score
    elif kind == "neg_linear":
        r = -score
    elif kind in ("inverse", "scaled_inverse"):
        denominator = EPS + score
        r = (1.0 if kind == "inverse" else 5.0) / denominator if denominator != 0 else float("nan")
    elif kind == "reciprocal":
        r = 1.0 / score if score != 0 else float("nan")
    elif kind == "exp_neg":
        r = math.exp(-score) if score > -700 else 0.0
    else:
        raise ValueError(f"unknown reward kind {kind!r}; choose one of {', '.join(KINDS)}")
    return float(r) if math.isfinite(r) else 0.0


@dataclass(frozen=True)
class RewardSpec:
    kind: str = "linear"
    partial_credit: float = 0.0  # weight in [0, 1); 0 = off
    partial_credit_scale: float = 1e-3  # violation at which partial credit reaches 0
    improvement_over_parent: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown reward kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if not 0.0 <= self.partial_credit < 1.0:
            raise ValueError(f"partial_credit must be in [0, 1), got {self.partial_credit}")
        if not self.partial_credit_scale > 0:
            raise ValueError(f"partial_credit_scale must be > 0, got {self.partial_credit_scale}")

    @classmethod
    def coerce(cls, value: Any, default_kind: str) -> "RewardSpec":
        """Accept a RewardSpec, a mapping (Hydra config) or None (the task's default kind)."""
        if value is None:
            return cls(kind=default_kind)
        if isinstance(value, RewardSpec):
            return value
        fields = dict(value)
        fields.setdefault("kind", default_kind)
        return cls(**fields)

    def to_dict(self) -> dict:
        return asdict(self)

    def valid(self, score: float, parent_score: float | None) -> float:
        """Reward of a valid answer with this score."""
        reward = transform(self.kind, score)
        if self.improvement_over_parent and parent_score is not None and math.isfinite(parent_score):
            reward -= transform(self.kind, parent_score)
        return reward

    def near_valid(self, score: float, violation: float) -> float:
        """Reward of an answer that misses validity by `violation` (>= 0); 0 when partial credit is off."""
        if self.partial_credit <= 0 or not (math.isfinite(violation) and violation >= 0 and math.isfinite(score)):
            return 0.0
        factor = max(0.0, 1.0 - violation / self.partial_credit_scale)
        return max(0.0, self.partial_credit * factor * transform(self.kind, score))
