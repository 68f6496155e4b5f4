"""Circle packing in the unit square: n disjoint circles, maximise the sum of radii (TTT-Discover CP26/CP32).

Contract: `run_packing() -> (centers (n, 2), radii (n,), sum_radii)`. The reported sum is ignored: the
score is `radii.sum()` recomputed here after validation. Every check is a positive predicate on finite values
(`np.all(x >= lo)` is False for NaN), so non-finite input fails every test, not just the first.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from envs import reference_data
from envs.base import State, VerifyResult
from envs.program_env import ProgramEnv
from envs.prompting import PromptSpec
from envs.sandbox import SandboxJob, SandboxOutcome
from envs.sandbox.result_channel import ChannelError, finite_float_array

TARGETS = {26: 2.636, 32: 2.940}  # shown in TTT-Discover's prompts

BASELINE_PROGRAM = '''import numpy as np

def run_packing():
    """Equal circles on a square grid: valid, far from optimal."""
    n = N_CIRCLES
    k = int(np.ceil(np.sqrt(n)))
    r = 0.5 / k
    centers = np.array([[(i % k) * 2 * r + r, (i // k) * 2 * r + r] for i in range(n)])
    radii = np.full(n, r)
    return centers, radii, float(radii.sum())
'''


def check_packing(centers: np.ndarray, radii: np.ndarray, n: int, tol: float = 1e-12) -> tuple[str, float]:
    """('', 0.0) if valid, else (reason, violation) where violation >= 0 measures how far from valid."""
    if centers.shape != (n, 2) or radii.shape != (n,):
        return f"expected centers of shape ({n}, 2) and radii of shape ({n},), got {centers.shape} and {radii.shape}", np.inf
    if not (np.all(np.isfinite(centers)) and np.all(np.isfinite(radii))):
        return "centers and radii must all be finite (found NaN or inf)", np.inf
    violations = []
    if not np.all(radii >= 0):
        i = int(np.argmin(radii))
        violations.append((f"circle {i} has a negative radius {radii[i]:.3e}", float(-radii[i])))
    lower = np.minimum(centers[:, 0], centers[:, 1]) - radii  # must be >= -tol
    upper = np.maximum(centers[:, 0], centers[:, 1]) + radii  # must be <= 1 + tol
    if not np.all(lower >= -tol):
        i = int(np.argmin(lower))
        violations.append((f"circle {i} crosses the square's lower/left side by {-lower[i]:.3e}", float(-lower[i])))
    if not np.all(upper <= 1 + tol):
        i = int(np.argmax(upper))
        violations.append((f"circle {i} crosses the square's upper/right side by {upper[i] - 1:.3e}",
                           float(upper[i] - 1)))
    if n > 1:
        diff = centers[:, None, :] - centers[None, :, :]
        dist = np.sqrt(np.sum(diff * diff, axis=-1))
        reach = radii[:, None] + radii[None, :]
        slack = dist - reach
        iu = np.triu_indices(n, 1)
        # TTT-Discover's test, rounded as it rounds: dist >= (r_i + r_j) - tol (dist - (r_i + r_j) >= -tol
        # rounds differently within a few ulps of the tolerance)
        if not np.all(dist[iu] >= reach[iu] - tol):
            k = int(np.argmin(slack[iu]))
            i, j = int(iu[0][k]), int(iu[1][k])
            violations.append((f"circles {i} and {j} overlap by {-slack[i, j]:.3e}", float(-slack[i, j])))
    if violations:
        reason, _ = max(violations, key=lambda v: v[1])
        return reason, max(v for _, v in violations)
    return "", 0.0


@dataclass
class CirclePackingEnv(ProgramEnv):
    name: str = "circle_packing"
    n: int = 26
    target: float | None = None
    tolerance: float = 1e-12
    timeout_s: float = 1000.0

    entry = "run_packing"
    higher_is_better = True
    default_reward = "linear"

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.n, int) or isinstance(self.n, bool) or not 1 <= self.n <= 10000:
            raise ValueError(f"circle packing needs an integer n in [1, 10000], got {self.n!r}")
        if self.target is None:
            self.target = TARGETS.get(self.n)

    def prompt_spec(self, state: State) -> PromptSpec:
        injected = ()
        if _construction_arrays(state.construction) is not None:
            injected = (f"`initial_centers` (numpy array ({self.n}, 2)) and `initial_radii` (numpy array "
                        f"({self.n},)): the previous packing, sum of radii {state.score}",)
        statement = (
            f"Pack {self.n} disjoint circles inside the unit square [0, 1] x [0, 1] so that the sum of their radii "
            f"is as large as possible. Circles may touch but must not overlap, and each must lie entirely inside "
            f"the square (tolerance {self.tolerance:g}). Return numpy arrays: centers of shape ({self.n}, 2), "
            f"radii of shape ({self.n},), and the sum of radii (reported only; the verifier recomputes it).")
        return PromptSpec(statement=statement, entry_signature="run_packing() -> (centers, radii, sum_radii)",
                          objective="sum of radii", higher_is_better=True, timeout_s=self.timeout_s,
                          cpus=self.cpus_per_eval, target=self.target,
                          verifier_source=inspect.getsource(check_packing), injected=injected)

    def job(self, program: str, state: State) -> SandboxJob:
        inputs, inject = {}, ()
        arrays = _construction_arrays(state.construction)
        if arrays is not None and arrays[0].shape == (self.n, 2):
            inputs = {"initial_centers": arrays[0], "initial_radii": arrays[1]}
            inject = ("initial_centers", "initial_radii")
        return SandboxJob(source=program, entry=self.entry, inputs=inputs, inject=inject)

    def score_outcome(self, outcome: SandboxOutcome, state: State) -> VerifyResult:
        arrays = outcome.arrays or []
        if len(arrays) < 2:
            return self.rejected(f"run_packing() must return (centers, radii, sum_radii); got {len(arrays)} item(s)")
        try:
            centers = finite_float_array(arrays[0], "centers", (self.n, 2))
            radii = finite_float_array(arrays[1], "radii", (self.n,))
        except ChannelError as e:
            return self.rejected(str(e))
        result = self.verify_construction(centers, radii, state)
        if len(arrays) > 2 and arrays[2].size == 1 and np.isfinite(arrays[2]).all():
            result.extra["reported_sum"] = float(arrays[2].reshape(-1)[0])  # for logs only, never scored
        return result

    def verify_construction(self, centers, radii, state: State = State()) -> VerifyResult:
        """Validate a packing and score it; the path shared by programs and construction files."""
        centers = np.asarray(centers, dtype=np.float64)
        radii = np.asarray(radii, dtype=np.float64)
        construction = {"centers": centers.tolist(), "radii": radii.tolist()}
        reason, violation = check_packing(centers, radii, self.n, self.tolerance)
        if reason:
            score = float(radii.sum()) if np.isfinite(violation) else None
            return self.rejected(reason, construction, score=score, violation=violation)
        return self.accepted(float(radii.sum()), construction, state)

    def initial_states(self, rng=None) -> list[State]:
        if self.initial_state == "best_available":
            published = reference_data.circle_packing(self.n)
            if published is not None:
                centers, radii = published
                construction = {"centers": centers.tolist(), "radii": radii.tolist()}
                return [State(construction=construction, score=float(radii.sum()), value=float(radii.sum()))]
        if self.initial_state == "none":
            return [State(code=BASELINE_PROGRAM.replace("N_CIRCLES", str(self.n)))]
        return [State(value=0.0)]  # TTT-Discover: empty code with value 0

    def baseline_program(self) -> str:
        return BASELINE_PROGRAM.replace("N_CIRCLES", str(self.n))


def _construction_arrays(construction) -> tuple[np.ndarray, np.ndarray] | None:
    if not isinstance(construction, dict) or "centers" not in construction or "radii" not in construction:
        return None
    try:
        centers = np.asarray(construction["centers"], dtype=np.float64)
        radii = np.asarray(construction["radii"], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if centers.ndim != 2 or centers.shape[1:] != (2,) or radii.shape != (centers.shape[0],):
        return None
    return centers, radii
