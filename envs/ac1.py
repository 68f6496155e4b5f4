"""AC1, the first autocorrelation inequality: minimise C1 over non-negative step functions (reward 1/C1).

For f >= 0 on [-1/4, 1/4], C1 = max_t (f*f)(t) / (integral f)^2. With n equal pieces of heights a this is
C1 = 2n * max(a * a) / (sum a)^2 (a flat function gives exactly 2). AlphaEvolve: 1.5052939684 (600 pieces);
TTT-Discover: 1.5028628983 (30,000 pieces). Contract: `propose_candidate(seed=42, budget_s=...)` returns the
heights; the parent's sequence is the global `height_sequence_1`.

Scoring is TTT-Discover's `evaluate_sequence` (tasks/alphaevolve_ac/verifier_ae.py): negative heights count
as 0, heights above 1000 as 1000, a sum below 0.01 is invalid; reward 1/C1 exactly. The construction kept
(and shown to the next prompt) is the sequence as returned, as in the reference. Differences: any numeric
1-D sequence is accepted (the reference requires a Python list of int/float and scores a numpy array as
invalid), and at most `max_length` pieces are scored (the reference has no cap but its O(n^2) convolution
takes minutes beyond 10^5 pieces, and longer sequences never enter its buffer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.base import State
from envs.prompting import PromptSpec
from envs.sequence_env import SequenceEnv
from envs.step_functions import MAX_HEIGHT, MIN_TOTAL, first_autocorrelation_c1, verifier_source

BASELINE = '''import numpy as np

def propose_candidate(seed=42, budget_s=1000):
    return np.ones(1000)  # flat: C1 = 2; 1,000 pieces, the fewest the state buffer keeps
'''


@dataclass
class FirstAutocorrelationEnv(SequenceEnv):
    name: str = "ac1"
    target: float = 1.5030
    timeout_s: float = 1000.0
    cpus_per_eval: int = 2

    entry = "propose_candidate"
    higher_is_better = False
    default_reward = "reciprocal"
    injected_name = "height_sequence_1"
    reference_key = "ac1_initial_state_heights_1319"  # best_available: the reference's 1,319-piece start
    baseline = BASELINE
    call_kwargs = ("seed", "budget_s")
    buffer_lengths = (1000, 100000)

    def prompt_spec(self, state: State) -> PromptSpec:
        statement = (
            "Find a non-negative step function f on [-1/4, 1/4] with n equal pieces that minimises the first "
            "autocorrelation constant C1 = max_t (f*f)(t) / (integral of f)^2. For heights a_0..a_{n-1} this is "
            "C1 = 2n * max(np.convolve(a, a)) / (sum a)^2; a flat function gives 2. Negative heights count as 0, "
            f"heights above {MAX_HEIGHT:g} as {MAX_HEIGHT:g}, and the sum must be at least {MIN_TOTAL:g}. "
            f"Use between {self.min_length} and {self.max_length} pieces (only constructions of "
            f"{self.buffer_lengths[0]:,} to {self.buffer_lengths[1]:,} pieces are kept to build on later). "
            "Lower C1 is better; the best known "
            "constructions use thousands of pieces (AlphaEvolve: 1.50529 with 600; TTT-Discover: 1.50286 with "
            "30,000). Useful idea: repeatedly solve a linear program that lowers the largest autoconvolution "
            "values while keeping the integral fixed, then refine or upsample.")
        source = verifier_source(first_autocorrelation_c1)
        return PromptSpec(statement=statement, entry_signature="propose_candidate(seed=42, budget_s=...) -> heights",
                          objective="C1", higher_is_better=False, timeout_s=self.timeout_s, cpus=self.cpus_per_eval,
                          target=self.target, verifier_source=source, injected=self.injected_lines(state))

    def objective(self, heights: np.ndarray) -> tuple[float | None, str]:
        return first_autocorrelation_c1(heights)
