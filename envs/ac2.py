"""AC2, the second autocorrelation inequality: maximise C2 over non-negative step functions (reward C2).

C2 = ||f*f||_2^2 / (||f*f||_1 ||f*f||_inf), with f*f exactly piecewise linear (envs/step_functions.py).
AlphaEvolve V1: 0.8962 (50 pieces); TTT-Discover 0.9591797711 (50,000). Contract: `construct_function()`
returns the heights; the parent's sequence is the global `height_sequence_2`.
Scoring is TTT-Discover's `evaluate_sequence` (tasks/alphaevolve_ac2/ae_verifier.py): negative heights count
as 0, heights above 1000 as 1000, a sum below 0.01 is invalid; reward C2 exactly. Differences, as for AC1: any
numeric 1-D sequence is accepted (the reference wants a Python list), and at most `max_length` pieces are
scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.base import State
from envs.prompting import PromptSpec
from envs.sequence_env import SequenceEnv
from envs.step_functions import MAX_HEIGHT, MIN_TOTAL, second_autocorrelation_c2, verifier_source

BASELINE = '''import numpy as np

def construct_function():
    return np.ones(50)
'''


@dataclass
class SecondAutocorrelationEnv(SequenceEnv):
    name: str = "ac2"
    target: float = 0.97
    timeout_s: float = 1000.0
    cpus_per_eval: int = 2

    entry = "construct_function"
    higher_is_better = True
    default_reward = "linear"
    injected_name = "height_sequence_2"
    reference_key = "ac2_step_heights"
    baseline = BASELINE
    buffer_lengths = (1000, 100000)  # TTT-Discover admits only these lengths to its buffer

    def prompt_spec(self, state: State) -> PromptSpec:
        statement = (
            "Find a non-negative step function f with n equal pieces that maximises the second autocorrelation "
            "constant C2 = ||f*f||_2^2 / (||f*f||_1 * ||f*f||_inf). f*f is piecewise linear through the values "
            "of np.convolve(a, a) with zeros at both ends, so its norms are computed exactly. Negative heights "
            f"count as 0, heights above {MAX_HEIGHT:g} as {MAX_HEIGHT:g}, and the sum must be at least {MIN_TOTAL:g}. "
            f"Use between {self.min_length} and {self.max_length} pieces (only constructions of "
            f"{self.buffer_lengths[0]:,} to {self.buffer_lengths[1]:,} pieces are kept to build on later). "
            "Higher C2 is better (AlphaEvolve: "
            "0.8962 with 50 pieces; 0.96 needs tens of thousands). Useful idea: explore with a coarse "
            "function, refine by gradient steps on C2, then upsample and refine again.")
        source = verifier_source(second_autocorrelation_c2)
        return PromptSpec(statement=statement, entry_signature="construct_function() -> heights", objective="C2",
                          higher_is_better=True, timeout_s=self.timeout_s, cpus=self.cpus_per_eval,
                          target=self.target, verifier_source=source, injected=self.injected_lines(state))

    def objective(self, heights: np.ndarray) -> tuple[float | None, str]:
        return second_autocorrelation_c2(heights)
