"""Curriculum over task instances (e.g. CP10 -> CP14 -> ... -> CP26, or ARC tasks): one env and one state
buffer per instance, per-instance difficulty statistics, and promotion to the next instance once a step on the
current one reaches the configured valid rate (and reward, if set). Without a curriculum there is one instance.

Adaptive batch: the next step's number of groups from this step's valid rate, so that a task where few
rollouts are valid gets more groups (more chances of a learning signal) and an easy one fewer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class InstanceStats:
    steps: int = 0
    rollouts: int = 0
    valid: int = 0
    reward_sum: float = 0.0
    best_reward: float = -math.inf
    promoted_at_step: int | None = None

    @property
    def valid_rate(self) -> float:
        return self.valid / self.rollouts if self.rollouts else 0.0

    def to_dict(self) -> dict:
        return {"steps": self.steps, "rollouts": self.rollouts, "valid": self.valid, "reward_sum": self.reward_sum,
                "best_reward": None if math.isinf(self.best_reward) else self.best_reward,
                "promoted_at_step": self.promoted_at_step}

    @classmethod
    def from_dict(cls, d: dict) -> "InstanceStats":
        best = -math.inf if d["best_reward"] is None else d["best_reward"]
        return cls(d["steps"], d["rollouts"], d["valid"], d["reward_sum"], best, d["promoted_at_step"])


@dataclass
class Curriculum:
    overrides: list[dict]  # env arguments per instance, merged over the base env config; [{}] = no curriculum
    promote_valid_rate: float = 0.5
    promote_reward: float | None = None
    current: int = 0
    stats: list[InstanceStats] = field(default_factory=list)

    def __post_init__(self):
        if not self.overrides:
            self.overrides = [{}]
        if not self.stats:
            self.stats = [InstanceStats() for _ in self.overrides]

    def record_step(self, step: int, valid: int, rollouts: int, reward_sum: float, best: float) -> bool:
        """Count one step on the current instance; True if it promoted to the next instance."""
        s = self.stats[self.current]
        s.steps, s.rollouts, s.valid = s.steps + 1, s.rollouts + rollouts, s.valid + valid
        s.reward_sum += reward_sum
        s.best_reward = max(s.best_reward, best)
        ready = rollouts > 0 and valid / rollouts >= self.promote_valid_rate and (
            self.promote_reward is None or best >= self.promote_reward)
        if ready and self.current + 1 < len(self.overrides):
            s.promoted_at_step = step
            self.current += 1
            return True
        return False

    def to_dict(self) -> dict:
        return {"current": self.current, "stats": [s.to_dict() for s in self.stats]}

    def restore(self, d: dict) -> None:
        self.current = d["current"]
        self.stats = [InstanceStats.from_dict(s) for s in d["stats"]]


def next_groups(groups: int, valid_rate: float, target: float, min_groups: int, max_groups: int,
                rollouts: int) -> int:
    """groups * target / valid_rate, clipped; a step with no valid rollout counts as 1/rollouts valid."""
    rate = max(valid_rate, 1.0 / max(rollouts, 1))
    return int(min(max_groups, max(min_groups, round(groups * target / rate))))
