"""AC1 on a few pieces, answered directly as heights: the first autocorrelation constant of a step function.

C1 = 2n max(a * a) / (sum a)^2 for heights a on n equal pieces (lower is better), under TTT-Discover's AC1
rules (envs/step_functions.py: negatives count as 0, heights above 1000 as 1000, a sum below 0.01 is invalid);
reward 1/C1, as its AC1 env. An answer has at most `pieces` heights (any shorter list is a step function too).
Equal heights give exactly 2; the run starts from `start` heights: `flat` (default: 12 equal heights, as
TTT-Discover's AC1 starts from a constant sequence) or `random` (integers 1..9 drawn with the env's seed).

Best known here (`BEST_KNOWN`): the lowest C1 that 300 SLSQP starts found for each n (epigraph form: minimise t
subject to conv(a, a) <= t, sum a = 1, a >= 0); tests/test_discovery_tasks.py checks that the stored heights
score it. For the paper's 600-30,000 pieces C1 is ~1.503.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from envs.number_answers import NumberListEnv, fmt
from envs.step_functions import first_autocorrelation_c1

# pieces -> (C1, heights) found by 300-start SLSQP (see the module docstring), heights rounded to 10 digits and
# C1 recomputed from them by this verifier
BEST_KNOWN: dict[int, tuple[float, list[float]]] = {
    8: (1.5791090612724583, [0.8082300912, 0.2948356653, 0.2091512607, 0.1704507139, 1.0, 0.6803403199,
                             0.5643078577, 0.4964357774]),
    12: (1.555962896514094, [1.0, 0.08058317317, 0.0, 0.3544393619, 0.8957014829, 0.0, 0.4325852657, 0.1925082288,
                             0.7836042866, 0.9837872183, 0.6652813302, 0.6964771938]),
    16: (1.5409029798829492, [0.3755769706, 0.4741605029, 0.6053203505, 0.5073529052, 0.5974568854, 0.6369517465,
                              0.09918671536, 0.145422477, 0.09194412488, 0.7112485372, 0.2684675339, 0.199924552,
                              0.15705955, 0.0, 0.0, 1.0]),
}
STARTS = ("random", "flat")


@dataclass
class AC1DirectEnv(NumberListEnv):
    name: str = "ac1_direct"
    pieces: int = 12
    start: str = "flat"

    higher_is_better = False
    default_reward = "reciprocal"
    score_name = "C1"
    what = "heights"

    def __post_init__(self):
        super().__post_init__()
        if not 2 <= self.pieces <= 64:
            raise ValueError(f"ac1_direct: pieces must be in 2..64, got {self.pieces}")
        if self.start not in STARTS:
            raise ValueError(f"ac1_direct: start must be one of {STARTS}, got {self.start!r}")
        self.best_known = BEST_KNOWN.get(self.pieces, (None,))[0]

    @property
    def count(self) -> int:
        return self.pieces

    def describe(self) -> str:
        return (f"A step function has at most {self.pieces} pieces of equal width, with non-negative heights. Its "
                "score is C1 = 2 * n * max(autoconvolution) / (sum of heights)^2, for n pieces: the peak of the "
                "function convolved with itself, relative to its area. Equal heights give exactly 2.")

    def show(self, construction) -> str:
        return "[" + ", ".join(fmt(x) for x in construction) + "]"

    def objective(self, numbers: np.ndarray):
        c1, reason = first_autocorrelation_c1(numbers)
        return c1, numbers.tolist(), reason

    def initial_construction(self) -> list:
        if self.start == "flat":
            return [5.0] * self.pieces
        rng = random.Random(f"ac1_direct:{self.seed}:{self.pieces}")
        return [float(rng.randint(1, 9)) for _ in range(self.pieces)]
