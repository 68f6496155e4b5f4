"""Circle packing on a few circles, answered directly as centres: maximise the sum of the radii.

The model places n centres in the unit square; the verifier gives them the radii that maximise the sum of the
radii with every circle inside the square and no two overlapping (a linear program in the radii once the
centres are fixed, solved with HiGHS), then makes that solution exactly feasible (a pair that overlaps by
solver rounding is shrunk to touch) and checks it at the circle packing task's own tolerance. Score = sum of
the radii (higher is better), reward = the score. An answer has at most n centres (fewer circles are a packing
too, with a lower best sum). Every list of points inside the square is valid, so a small model's edits are
scored rather than rejected, while the optimum still needs a precise arrangement.
The run starts from n centres evenly spaced on the horizontal midline (sum of radii about 0.5).

Best known here (`BEST_KNOWN`): the best sum of radii that 300 SLSQP starts over centres and radii found for
each n, re-scored by this verifier (tests/test_discovery_tasks.py checks the stored centres score it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from envs.number_answers import NumberListEnv, fmt

TOL = 1e-12  # the circle packing verifier's tolerance (TTT-Discover's CP rules)

# n -> (sum of radii, centres) found by 300-start SLSQP (see the module docstring), centres rounded to 10 digits
# and the sum recomputed from them by this verifier. n = 5 is the known optimum: four circles of radius 1/4 in
# the corners' quarters and one of sqrt(2)/4 - 1/4 in the middle.
BEST_KNOWN = {
    5: (1.1035533905932737, [[0.75, 0.25], [0.5, 0.5], [0.25, 0.75], [0.25, 0.25], [0.75, 0.75]]),
    6: (1.2028389107, [[0.5449379138, 0.1884928878], [0.8217065677, 0.8217065677], [0.333797293, 0.666202707],
                       [0.8115071122, 0.4550620862], [0.8645310225, 0.1354689775], [0.1782934323, 0.1782934323]]),
    8: (1.4238139150851759, [[0.8511533024, 0.1488466976], [0.1488466976, 0.8511533024], [0.5, 0.2071067812],
                             [0.2071067812, 0.5], [0.5, 0.7928932188], [0.7928932188, 0.5],
                             [0.1488466976, 0.1488466976], [0.8511533024, 0.8511533024]]),
}


def wall_distances(centres: np.ndarray) -> np.ndarray:
    x, y = centres[:, 0], centres[:, 1]
    return np.minimum.reduce([x, 1 - x, y, 1 - y])


def lp_radii(centres: np.ndarray) -> tuple[np.ndarray | None, str]:
    """(the radii maximising their sum for these centres, exactly feasible, '') or (None, reason)."""
    from scipy.optimize import linprog

    n = len(centres)
    i, j = np.triu_indices(n, 1)
    dist = np.sqrt(((centres[i] - centres[j]) ** 2).sum(-1))
    pairs = np.zeros((len(i), n))
    pairs[np.arange(len(i)), i] = 1.0
    pairs[np.arange(len(i)), j] = 1.0
    walls = wall_distances(centres)
    result = linprog(-np.ones(n), A_ub=pairs if len(i) else None, b_ub=dist if len(i) else None,
                     bounds=list(zip(np.zeros(n), walls)), method="highs")
    if result.status != 0:
        return None, f"the radii LP failed: {result.message}"
    radii = np.clip(result.x, 0.0, walls)
    for a, b, d in zip(i, j, dist):  # solver rounding: shrink an overlapping pair until it touches
        if radii[a] + radii[b] > d:
            scale = d / (radii[a] + radii[b])
            radii[a] *= scale
            radii[b] *= scale
    return radii, ""


def packing_violation(centres: np.ndarray, radii: np.ndarray) -> float:
    """The largest violation of the circle packing rules (<= TOL means valid)."""
    i, j = np.triu_indices(len(centres), 1)
    dist = np.sqrt(((centres[i] - centres[j]) ** 2).sum(-1))
    overlap = (radii[i] + radii[j] - dist).max(initial=-np.inf)
    outside = (radii - wall_distances(centres)).max(initial=-np.inf)
    return float(max(overlap, outside, (-radii).max(initial=-np.inf)))


@dataclass
class CPDirectEnv(NumberListEnv):
    name: str = "cp_direct"
    circles: int = 6
    start: str = "cluster"

    higher_is_better = True
    default_reward = "linear"
    score_name = "sum of radii"
    what = "centres"
    per_item = 2
    answer_prefix = "[("
    bounds = (0.0, 1.0)

    def __post_init__(self):
        super().__post_init__()
        if not 2 <= self.circles <= 32:
            raise ValueError(f"cp_direct: circles must be in 2..32, got {self.circles}")
        if self.start not in ("cluster", "line"):
            raise ValueError(f"cp_direct: start must be 'cluster' or 'line', got {self.start!r}")
        self.best_known = BEST_KNOWN.get(self.circles, (None,))[0]

    @property
    def count(self) -> int:
        return 2 * self.circles

    def describe(self) -> str:
        return (f"Place at most {self.circles} circle centres (x, y) in the unit square (0 <= x, y <= 1). Each circle "
                "gets the radius that makes the sum of all radii as large as possible, with every circle inside the "
                "square and no two overlapping. The score is that sum of radii.")

    def show(self, construction) -> str:
        return "[" + ", ".join(f"({fmt(x)}, {fmt(y)})" for x, y in construction) + "]"

    def objective(self, numbers: np.ndarray):
        centres = numbers.reshape(-1, 2)
        outside = np.nonzero((centres < 0).any(1) | (centres > 1).any(1))[0]
        if outside.size:
            k = int(outside[0])
            return None, centres.tolist(), (f"centre {k + 1} ({fmt(centres[k, 0])}, {fmt(centres[k, 1])}) is "
                                            "outside the unit square")
        radii, reason = lp_radii(centres)
        if radii is None:
            return None, centres.tolist(), reason
        violation = packing_violation(centres, radii)
        if violation > TOL:  # cannot happen after lp_radii's repair; checked as the packing task checks
            return None, centres.tolist(), f"the radii violate the packing rules by {violation:.3g}"
        return float(radii.sum()), centres.tolist(), ""

    def initial_construction(self) -> list:
        n = self.circles  # rounded to 2 decimals: the model copies what it is shown
        if self.start == "line":
            return [[round((2 * k + 1) / (2 * n), 2), 0.5] for k in range(n)]
        cols = math.ceil(math.sqrt(n))  # cluster: a grid of pitch 0.1 around the centre
        return [[round(0.5 + 0.1 * (k % cols - (cols - 1) / 2), 2), round(0.5 + 0.1 * (k // cols - (n - 1) // cols / 2), 2)]
                for k in range(n)]
