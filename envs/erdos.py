"""Erdős minimum overlap: minimise C5 over step functions h: [0, 2] -> [0, 1] with integral 1 (reward 1/C5).

With n equal pieces, integral 1 means sum h = n/2, and C5 = max_k sum_i h_i (1 - h_{i+k}) * 2/n, i.e.
`max(np.correlate(h, 1 - h, "full")) * 2 / n`. Contract: `run(seed=42, budget_s=...) -> (h_values, c5_bound,
n_points)`; the parent's sequence is the global `initial_h_values`.

Unlike TTT-Discover (known bugs 1 and 2): `initial_h_values` is really defined, and C5 is always recomputed
here; the reported `c5_bound` is logged, never scored (a 1e-4 tolerance exceeds the whole claimed improvement).
Haugland 2016: 0.3809268534; AlphaEvolve: 0.3809230351 (95 pieces); TTT-Discover: 0.3808753232 (600).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from envs.base import State, VerifyResult
from envs.prompting import PromptSpec
from envs.sequence_env import SequenceEnv

BASELINE = '''import numpy as np

def run(seed=42, budget_s=1000):
    n = 100
    h = np.full(n, 0.5)
    c5 = float(np.max(np.correlate(h, 1 - h, "full")) * 2 / n)
    return h, c5, n
'''


def erdos_c5(h_values: np.ndarray, tol: float = 1e-12) -> tuple[float | None, str]:
    """(C5, '') for a valid sequence, else (None, reason). Rescales to sum n/2 and re-checks [0, 1]."""
    n = h_values.size
    if h_values.ndim != 1 or n == 0:
        return None, f"h_values must be a non-empty 1-D sequence, got shape {h_values.shape}"
    if not np.all(np.isfinite(h_values)):
        return None, "h_values must all be finite (found NaN or inf)"
    if not (np.all(h_values >= 0) and np.all(h_values <= 1)):
        return None, "h_values must lie in [0, 1]"
    total = h_values.sum()
    if not total > 0:
        return None, "h_values are all zero"
    h = h_values * (n / 2.0) / total  # integral 1 on [0, 2]
    if not (np.all(h >= 0) and np.all(h <= 1 + tol)):
        return None, f"after rescaling to sum n/2 = {n / 2:g}, max h = {h.max():.6g} exceeds 1"
    return float(np.max(np.correlate(h, 1.0 - h, "full")) * 2.0 / n), ""


@dataclass
class ErdosMinOverlapEnv(SequenceEnv):
    name: str = "erdos"
    target: float = 0.3808
    max_length: int = 1000
    timeout_s: float = 1000.0
    cpus_per_eval: int = 2

    entry = "run"
    higher_is_better = False
    default_reward = "inverse"
    injected_name = "initial_h_values"
    reference_key = "erdos_min_overlap_sequence"
    baseline = BASELINE
    buffer_lengths = (1, 1000)  # TTT-Discover admits only these lengths to its buffer
    call_kwargs = ("seed", "budget_s")
    split_result = True

    def prompt_spec(self, state: State) -> PromptSpec:
        statement = (
            "Erdős minimum overlap problem. Find a step function h: [0, 2] -> [0, 1] with n equal pieces and "
            "integral 1 that minimises C5 = max_k integral h(x) (1 - h(x + k)) dx. For values h_0..h_{n-1} "
            "(rescaled to sum n/2) this is C5 = max(np.correlate(h, 1 - h, 'full')) * 2 / n. "
            f"Use between {self.min_length} and {self.max_length} points. Lower is better; current record "
            "C5 <= 0.38092 (AlphaEvolve), improved to 0.380875 with 600 points. Return (h_values, c5_bound, "
            "n_points); c5_bound is only reported, the verifier recomputes C5.")
        return PromptSpec(statement=statement, entry_signature="run(seed=42, budget_s=...) -> (h_values, c5_bound, n_points)",
                          objective="C5", higher_is_better=False, timeout_s=self.timeout_s, cpus=self.cpus_per_eval,
                          target=self.target, verifier_source=inspect.getsource(erdos_c5),
                          injected=self.injected_lines(state), max_code_lines=200)

    def score_sequence(self, heights: np.ndarray, state: State, rest: list) -> VerifyResult:
        construction = heights.tolist()
        extra = {"length": int(heights.size)}
        if rest and rest[0].size == 1 and np.all(np.isfinite(rest[0])):
            extra["reported_c5"] = float(rest[0].reshape(-1)[0])  # logged, never scored (bug 2)
        if len(rest) > 1 and not (rest[1].size == 1 and float(rest[1].reshape(-1)[0]) == heights.size):
            return self.rejected(f"n_points does not match the {heights.size} h_values returned", construction,
                                 extra=extra)
        if not self.min_length <= heights.size <= self.max_length:
            return self.rejected(f"need between {self.min_length} and {self.max_length} points, got {heights.size}",
                                 construction, extra=extra)
        c5, reason = erdos_c5(heights)
        if c5 is None:
            return self.rejected(reason, construction, extra=extra)
        return self.accepted(c5, construction, state, extra=extra)

    def verify_construction(self, h_values, state: State = State()) -> VerifyResult:
        return self.score_sequence(np.asarray(h_values, dtype=np.float64), state, [])

    def random_sequence(self, rng: np.random.Generator) -> np.ndarray:
        # TTT-Discover: n ~ U{40..99} points, 0.5 + mean-centred U(-0.4, 0.4)
        u = rng.uniform(-0.4, 0.4, size=int(rng.integers(40, 100)))
        return 0.5 + (u - u.mean())
