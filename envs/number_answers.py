"""Discovery tasks answered directly as a short list of numbers, with state reuse (TTT-Discover's loop, small).

Why: a model too small to write an optimisation program (SmolLM2-135M writes 0 valid CP26 programs in 64 tries)
can still edit a list of a dozen numbers it is shown. Each prompt carries the parent state's numbers and their
score, so a child that improves on its parent becomes a parent in turn (improvements compound through the PUCT
buffer), the score is continuous, and an answer is a few dozen tokens. The answer is parsed here as data (the
numbers of the last [...] list in the completion); no program runs, so these tasks need no sandbox.

A subclass says what the numbers are (`what`, `describe`), how many at most (`count`, in steps of `per_item`:
an answer may list fewer items, as a small model often does, and is scored as it stands), how to score them
(`objective(numbers) -> (score, construction, '') or (None, construction, reason)`), and where it starts. The
prompt ends with `answer_prefix` ("[" or "[("), so the model's turn begins inside the list.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.base import Env, State, VerifyResult, failed
from envs.rewards import RewardSpec

NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
MAX_ANSWER_CHARS = 4000  # a list of a few dozen numbers; anything longer is not an answer to this task


def last_bracketed(text: str) -> str | None:
    """The last top-level [...] span of `text` (nested brackets included); a list left open at the end (a
    completion stopped at its closing "]", which the stop string removes) counts to the end. None if no list."""
    opened = text.rfind("[")
    end = text.rfind("]")
    if opened > end:
        return text[opened:] + "]"
    if end < 0:
        return None
    depth = 0
    for i in range(end, -1, -1):
        depth += {"]": 1, "[": -1}.get(text[i], 0)
        if depth == 0:
            return text[i:end + 1]
    return None


def numbers_in(answer: str) -> list[float]:
    return [float(x) for x in NUMBER.findall(answer)]


def fmt(x: float) -> str:
    """A number as the prompt shows it: what the model wrote, without float noise (0.1 + 0.2 -> 0.3)."""
    return f"{x:.6g}"


@dataclass
class NumberListEnv(Env):
    reward: Any = None  # RewardSpec, a mapping with its fields, or None for the task's default
    seed: int = 0

    # --- what subclasses provide -----------------------------------------------------------------------------
    higher_is_better = True
    default_reward = "linear"
    score_name = "score"
    what = "numbers"  # what the list is ("heights", "centres"), for the prompt
    per_item = 1  # numbers per item (2 for an (x, y) centre)
    bounds: tuple[float, float | None] = (0.0, None)  # where a hill climber's moves stay (the task's domain)
    answer_prefix = "["
    best_known: float | None = None  # shown to the model as the target, and the headroom in reports

    @property
    def count(self) -> int:
        """The most numbers an answer may have."""
        raise NotImplementedError

    def describe(self) -> str:
        """The task and its scoring rule, in a few lines."""
        raise NotImplementedError

    def show(self, construction: Any) -> str:
        """The construction as the prompt shows it (and as the model is asked to answer)."""
        raise NotImplementedError

    def objective(self, numbers: np.ndarray) -> tuple[float | None, Any, str]:
        raise NotImplementedError

    def initial_construction(self) -> list:
        raise NotImplementedError

    def perturb(self, numbers: np.ndarray, rng: np.random.Generator, step: float) -> np.ndarray:
        """A random neighbour, for the classical baseline (envs/hill_climb.py): one item moved by Gaussian noise
        of `step` times the numbers' scale (the largest magnitude, or 1 in a bounded domain), kept in `bounds`."""
        low, high = self.bounds
        scale = (high - low) if high is not None else max(float(np.abs(numbers).max()), 1.0)
        out = numbers.copy()
        item = int(rng.integers(numbers.size // self.per_item))
        moved = slice(item * self.per_item, (item + 1) * self.per_item)
        out[moved] = np.clip(out[moved] + rng.normal(0.0, step * scale, self.per_item), low, high)
        return out

    # --- the Env interface ---------------------------------------------------------------------------------
    def __post_init__(self):
        self.reward = RewardSpec.coerce(self.reward, self.default_reward)

    def statement(self) -> str:
        return self.describe()

    def prompt(self, state: State) -> str:
        better = "higher" if self.higher_is_better else "lower"
        # No target value here: a 135M model copies numbers it is shown into its list (with "The best known is
        # 1.20284" in the prompt, answers ended in "(1.20284)" and none improved on the parent in 64 samples).
        return "\n".join([self.describe(),
                          f"Current {self.what}: {self.show(state.construction)}",
                          f"Their {self.score_name} is {fmt(state.score)} ({better} is better).",
                          f"Change a few numbers to get a {better} {self.score_name}. Reply with only the new list."])

    def parse(self, completion: str) -> str | None:
        return last_bracketed((self.answer_prefix + completion)[-MAX_ANSWER_CHARS:])

    def verify(self, answer: str, state: State) -> VerifyResult:
        numbers = np.array(numbers_in(answer), dtype=np.float64)
        if not self.per_item <= numbers.size <= self.count or numbers.size % self.per_item:
            unit = "numbers" if self.per_item == 1 else f"numbers ({self.per_item} per {self.what[:-1]})"
            return failed("invalid", f"need 1 to {self.count // self.per_item} {self.what}: {self.per_item} to "
                                     f"{self.count} {unit} in the answer's list, got {numbers.size}")
        if not np.all(np.isfinite(numbers)):
            return failed("invalid", "the numbers must be finite")
        score, construction, reason = self.objective(numbers)
        if score is None:
            return failed("invalid", reason, construction=construction)
        if not math.isfinite(score):
            return failed("invalid", f"the score is not finite ({score})", construction=construction)
        return VerifyResult(status="ok", reward=self.reward.valid(score, state.score), score=score,
                            value=score if self.higher_is_better else -score, construction=construction)

    def verify_construction(self, construction: Any, state: State = State()) -> VerifyResult:
        """Score a construction given as data (`ttt verify` on a JSON file, tests)."""
        return self.verify(str(np.asarray(construction, dtype=np.float64).ravel().tolist()), state)

    def initial_states(self, rng: Any = None) -> list[State]:
        construction = self.initial_construction()
        result = self.verify_construction(construction)
        if not result.ok:
            raise ValueError(f"{self.name}: the initial construction is invalid: {result.message}")
        return [State(construction=result.construction, score=result.score, value=result.value)]
