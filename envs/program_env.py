"""Base class of tasks whose answer is a Python program run in the sandbox.

verify(answer, state): build a SandboxJob (the program, its entry call, injected state) -> run it sandboxed
-> if the run failed, a failure record (reward 0) with the reason -> otherwise the subclass validates the
returned data and computes the score in this process (never trusting anything the program reported) ->
the reward via the task's RewardSpec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from envs.base import Env, State, VerifyResult, failed
from envs.prompting import PromptSpec, improvement_prompt
from envs.rewards import RewardSpec
from envs.sandbox import Limits, SandboxJob, SandboxOutcome, isolation, run_sandboxed

INITIAL_STATE_KINDS = ("random", "best_available", "none")


@dataclass
class ProgramEnv(Env):
    """Fields shared by every program task. Subclasses set `entry`, `higher_is_better`, `default_reward`."""

    timeout_s: float = 60.0
    cpus_per_eval: int = 1
    memory_mb: int = 2048
    initial_state: str = "random"
    reward: Any = None  # RewardSpec, a mapping with its fields, or None for the task's default
    seed: int = 0

    entry = "main"
    higher_is_better = True
    default_reward = "linear"

    def __post_init__(self):
        self.reward = RewardSpec.coerce(self.reward, self.default_reward)
        if self.initial_state not in INITIAL_STATE_KINDS:
            raise ValueError(f"initial_state must be one of {INITIAL_STATE_KINDS}, got {self.initial_state!r}")
        if not (self.timeout_s > 0 and self.cpus_per_eval >= 1 and self.memory_mb >= 64):
            raise ValueError("need timeout_s > 0, cpus_per_eval >= 1 and memory_mb >= 64")

    # --- what subclasses provide -------------------------------------------------------------------------
    def prompt_spec(self, state: State) -> PromptSpec:
        raise NotImplementedError

    def job(self, program: str, state: State) -> SandboxJob:
        return SandboxJob(source=program, entry=self.entry)

    def score_outcome(self, outcome: SandboxOutcome, state: State) -> VerifyResult:
        raise NotImplementedError

    # --- shared machinery --------------------------------------------------------------------------------
    def statement(self) -> str:
        return self.prompt_spec(State()).statement

    def prompt(self, state: State) -> str:
        return improvement_prompt(self.prompt_spec(state), state)

    def limits(self) -> Limits:
        return Limits(timeout_s=self.timeout_s, cpus=self.cpus_per_eval, memory_mb=self.memory_mb)

    @property
    def budget_s(self) -> int:
        """The time budget promised to the program: the limit minus a margin for start-up and output."""
        return max(1, int(self.timeout_s - max(2.0, 0.05 * self.timeout_s)))

    def verify(self, answer: str, state: State) -> VerifyResult:
        """IsolationError where this host cannot keep the isolation level in force (envs/sandbox/isolation.py)."""
        outcome = run_sandboxed(self.job(answer, state), self.limits())
        extra = {"stderr_tail": outcome.stderr_tail, "pids_limit_hit": outcome.pids_limit_hit,
                 "sandbox_isolation": isolation.current_level()}
        if not outcome.ok:
            return failed(outcome.status, outcome.message, stdout_tail=outcome.stdout_tail,
                          wall_s=outcome.wall_s, extra=extra)
        result = self.score_outcome(outcome, state)
        result.stdout_tail, result.wall_s = outcome.stdout_tail, outcome.wall_s
        result.extra = {**extra, **result.extra}
        return result

    def accepted(self, score: float, construction: Any, state: State, message: str = "",
                 extra: dict | None = None) -> VerifyResult:
        """A valid answer: the reward from the recomputed score (and the parent's, if that reward is on)."""
        if not math.isfinite(score):
            return self.rejected(f"the recomputed score is not finite ({score})", construction)
        value = score if self.higher_is_better else -score
        return VerifyResult(status="ok", reward=self.reward.valid(score, state.score), score=score, value=value,
                            construction=construction, message=message, extra=dict(extra or {}))

    def rejected(self, reason: str, construction: Any = None, score: float | None = None,
                 violation: float | None = None, extra: dict | None = None) -> VerifyResult:
        """An invalid answer; near-valid ones may earn partial credit when the RewardSpec enables it."""
        reward = 0.0
        if score is not None and violation is not None:
            reward = self.reward.near_valid(score, violation)
        return VerifyResult(status="invalid", reward=reward, score=None, value=None, construction=construction,
                            message=reason,
                            extra={**(extra or {}), **({"violation": violation} if violation and math.isfinite(violation) else {})})
