"""AC1, the first autocorrelation inequality: minimise C1 over non-negative step functions (reward 1/C1).

For f >= 0 on [-1/4, 1/4], C1 = max_t (f*f)(t) / (integral f)^2. With n equal pieces of heights a this is
C1 = 2n * max(a * a) / (sum a)^2 (a flat function gives exactly 2). AlphaEvolve: 1.5052939684 (600 pieces);
TTT-Discover: 1.5028628983 (30,000 pieces). Contract: `propose_candidate(seed=42, budget_s=...)` returns the
heights; the parent's sequence is the global `height_sequence_1`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from envs.base import State
from envs.prompting import PromptSpec
from envs.sequence_env import SequenceEnv
from envs.step_functions import autoconvolution, check_heights, first_autocorrelation_c1

BASELINE = '''import numpy as np

def propose_candidate(seed=42, budget_s=1000):
    return np.ones(600)  # flat: C1 = 2
'''


@dataclass
class FirstAutocorrelationEnv(SequenceEnv):
    name: str = "ac1"
    target: float = 1.5030
    timeout_s: float = 1000.0
    cpus_per_eval: int = 2

    entry = "propose_candidate"
    higher_is_better = False
    default_reward = "inverse"
    injected_name = "height_sequence_1"
    reference_key = "ac1_step_heights"
    baseline = BASELINE
    call_kwargs = ("seed", "budget_s")

    def prompt_spec(self, state: State) -> PromptSpec:
        statement = (
            "Find a non-negative step function f on [-1/4, 1/4] with n equal pieces that minimises the first "
            "autocorrelation constant C1 = max_t (f*f)(t) / (integral of f)^2. For heights a_0..a_{n-1} this is "
            "C1 = 2n * max(np.convolve(a, a)) / (sum a)^2; a flat function gives 2. "
            f"Use between {self.min_length} and {self.max_length} pieces. Lower C1 is better; the best known "
            "constructions use thousands of pieces (AlphaEvolve: 1.50529 with 600; TTT-Discover: 1.50286 with "
            "30,000). Useful idea: repeatedly solve a linear program that lowers the largest autoconvolution "
            "values while keeping the integral fixed, then refine or upsample.")
        source = "\n".join(inspect.getsource(f) for f in (check_heights, autoconvolution, first_autocorrelation_c1))
        return PromptSpec(statement=statement, entry_signature="propose_candidate(seed=42, budget_s=...) -> heights",
                          objective="C1", higher_is_better=False, timeout_s=self.timeout_s, cpus=self.cpus_per_eval,
                          target=self.target, verifier_source=source, injected=self.injected_lines(state))

    def objective(self, heights: np.ndarray) -> float:
        return first_autocorrelation_c1(heights)
