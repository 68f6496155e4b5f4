"""Shared shape of the tasks whose construction is one sequence of heights (AC1, AC2, Erdős).

The parent state's sequence is injected as a numpy global (TTT-Discover injects `height_sequence_1` for AC1;
its Erdős task promised `initial_h_values` but never defined it, known bug 1: here it is always defined).
Initial states: `random` (TTT-Discover's draws), `best_available` (the published construction), `none`
(no construction, the task's baseline program).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.base import State, VerifyResult
from envs.program_env import ProgramEnv
from envs.sandbox import SandboxJob, SandboxOutcome
from envs.sandbox.result_channel import ChannelError, finite_float_array


def as_generator(rng, default_seed: int) -> np.random.Generator:
    """A numpy Generator from None (the env's seed), an int seed, a Generator or a random.Random."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng(default_seed)
    if hasattr(rng, "getrandbits"):
        return np.random.default_rng(rng.getrandbits(64))
    return np.random.default_rng(rng)


@dataclass
class SequenceEnv(ProgramEnv):
    min_length: int = 1
    max_length: int = 100000

    injected_name = "height_sequence"
    reference_key = ""
    baseline = ""
    call_kwargs = ()  # names of (seed, budget_s) style keyword arguments the entry receives (a class attribute:
    # as a dataclass field, the subclasses' values would be replaced by this default in __init__)
    split_result = False  # the entry returns one sequence (Erdős returns a tuple and sets this True)
    # Lengths a child's construction may have to enter the state buffer (TTT-Discover's PUCTSampler.update_states:
    # AC1/AC2 1,000..100,000 pieces, Erdős at most 1,000); longer or shorter ones are still scored and rewarded.
    buffer_lengths = (1, None)

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(f"need 1 <= min_length <= max_length, got {self.min_length}, {self.max_length}")

    # subclasses: score_sequence(heights, state, extra) -> VerifyResult; random_sequence(rng) -> np.ndarray

    def parent_sequence(self, state: State) -> np.ndarray | None:
        try:
            seq = np.asarray(state.construction, dtype=np.float64)
        except (TypeError, ValueError):
            return None
        return seq if seq.ndim == 1 and seq.size > 0 and np.all(np.isfinite(seq)) else None

    def injected_lines(self, state: State) -> tuple[str, ...]:
        seq = self.parent_sequence(state)
        if seq is None:
            return ()
        return (f"`{self.injected_name}`: numpy array of the previous construction ({seq.size} values, "
                f"score {state.score}); build on it or ignore it.",)

    def admits(self, state: State) -> bool:
        """A child whose construction is empty or missing is admitted, as in the reference (it checks only
        non-empty constructions)."""
        construction = state.construction
        if construction is None or len(construction) == 0:
            return True
        low, high = self.buffer_lengths
        return low <= len(construction) and (high is None or len(construction) <= high)

    def job(self, program: str, state: State) -> SandboxJob:
        seq = self.parent_sequence(state)
        inputs = {} if seq is None else {self.injected_name: seq}
        kwargs = {k: v for k, v in (("seed", 42), ("budget_s", self.budget_s)) if k in self.call_kwargs}
        return SandboxJob(source=program, entry=self.entry, kwargs=kwargs, inputs=inputs,
                          inject=tuple(inputs), split_result=self.split_result)

    def score_outcome(self, outcome: SandboxOutcome, state: State) -> VerifyResult:
        arrays = outcome.arrays or []
        if not arrays:
            return self.rejected(f"{self.entry}() returned nothing")
        try:
            heights = finite_float_array(arrays[0], "heights", (None,))
        except ChannelError as e:
            return self.rejected(str(e))
        return self.score_sequence(heights, state, arrays[1:])

    def objective(self, heights: np.ndarray) -> tuple[float | None, str]:
        """(the task's objective, '') or (None, reason): AC1's C1, AC2's C2."""
        raise NotImplementedError

    def score_sequence(self, heights: np.ndarray, state: State, rest: list) -> VerifyResult:
        """Autocorrelation tasks: at most max_length pieces, then the reference's rules (envs/step_functions)."""
        construction = heights.tolist()  # kept as returned (negatives and all), as the reference keeps it
        if heights.ndim == 1 and not self.min_length <= heights.size <= self.max_length:
            return self.rejected(f"need between {self.min_length} and {self.max_length} heights, got {heights.size}",
                                 construction)
        value, reason = self.objective(heights)
        if value is None:
            return self.rejected(reason, construction)
        return self.accepted(value, construction, state, extra={"length": int(heights.size)})

    def verify_construction(self, heights, state: State = State()) -> VerifyResult:
        return self.score_sequence(np.asarray(heights, dtype=np.float64), state, [])

    def random_sequence(self, rng: np.random.Generator) -> np.ndarray:
        # TTT-Discover: a constant sequence [u] * L, u ~ U(0, 1), L ~ U{1000..7999}
        return np.full(int(rng.integers(1000, 8000)), float(rng.uniform(0.0, 1.0)))

    def initial_states(self, rng=None) -> list[State]:
        rng = as_generator(rng, self.seed)
        if self.initial_state == "none":
            return [State(code=self.baseline)]
        if self.initial_state == "best_available" and self.reference_key:
            from envs import reference_data

            seq = reference_data.heights(self.reference_key)
        else:
            seq = self.random_sequence(rng)
        result = self.score_sequence(seq, State(), [])
        return [State(construction=seq.tolist(), score=result.score, value=result.value)]
