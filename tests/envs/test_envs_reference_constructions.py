"""Published constructions verify to their published values; perturbed copies are rejected with a reason.

Reference numbers come from the AlphaEvolve results (TTT_DISCOVER.md §4 conformance values), and the
objectives are re-derived here with independent, deliberately different code (pure-Python loops, exact
piecewise-linear integration by another route).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from envs import reference_data
from envs.ac1 import FirstAutocorrelationEnv
from envs.ac2 import SecondAutocorrelationEnv
from envs.circle_packing import CirclePackingEnv
from envs.erdos import ErdosMinOverlapEnv
from envs.rewards import RewardSpec
from tests import reference_ttt as ref

PUBLISHED = {"cp26": 2.6358627564, "cp32": 2.9379445262, "ac1": 1.5052939684}


def _cp(reference, n):
    rows = np.array(reference[f"circle_packing_{n}"], dtype=np.float64)
    return rows[:, :2].copy(), rows[:, 2].copy()


def test_packaged_copy_matches_the_shared_reference(reference):
    with open(reference_data.PATH) as f:
        assert json.load(f) == reference


@pytest.mark.parametrize("n,key", [(26, "cp26"), (32, "cp32")])
def test_published_circle_packings_verify(reference, n, key):
    centers, radii = _cp(reference, n)
    result = CirclePackingEnv(n=n).verify_construction(centers, radii)
    assert result.ok, result.message
    assert abs(result.score - PUBLISHED[key]) < 1e-9
    assert abs(result.score - reference["published_values"][f"circle_packing_{n}_sum_radii"]) < 1e-9
    assert result.reward == pytest.approx(result.score) and result.value == pytest.approx(result.score)
    # independent pure-Python validity check at the contract's tolerance
    for i in range(n):
        x, y = centers[i]
        assert x - radii[i] >= -1e-12 and x + radii[i] <= 1 + 1e-12 and y - radii[i] >= -1e-12 and y + radii[i] <= 1 + 1e-12
        for j in range(i + 1, n):
            assert math.dist(centers[i], centers[j]) >= radii[i] + radii[j] - 1e-12


def test_published_ac1_verifies(reference):
    heights = np.array(reference["ac1_step_heights"])
    result = FirstAutocorrelationEnv().verify_construction(heights)
    assert result.ok, result.message
    assert abs(result.score - PUBLISHED["ac1"]) < 1e-9
    h = [float(x) for x in reference["ac1_step_heights"]]  # pure-Python convolution
    n = len(h)
    conv_max = max(sum(h[i] * h[k - i] for i in range(max(0, k - n + 1), min(k, n - 1) + 1)) for k in range(2 * n - 1))
    assert abs(result.score - 2 * n * conv_max / sum(h) ** 2) < 1e-9
    assert result.reward == pytest.approx(1 / result.score) and result.value == pytest.approx(-result.score)


def _exact_c2(h: list[float]) -> float:
    """C2 from f*f evaluated as a sum of triangles (overlap lengths of two boxes), integrated per piece.

    Pieces have width 1; (f*f)(t) is linear between integer t, so Simpson's rule is exact on each piece.
    """
    n = len(h)

    def conv(t: float) -> float:
        total = 0.0
        for i in range(n):
            for j in range(n):
                overlap = max(0.0, 1.0 - abs(t - (i + j + 1)))  # box [i, i+1] * box [j, j+1] is a triangle at i+j+1
                if overlap:
                    total += h[i] * h[j] * overlap
        return total

    knots = [conv(float(t)) for t in range(2 * n + 1)]
    mids = [conv(t + 0.5) for t in range(2 * n)]
    l2 = sum((a * a + 4 * m * m + b * b) / 6 for a, m, b in zip(knots, mids, knots[1:]))
    l1 = sum((a + 4 * m + b) / 6 for a, m, b in zip(knots, mids, knots[1:]))
    return l2 / (l1 * max(knots))


def test_published_ac2_verifies(reference):
    heights = reference["ac2_step_heights"]
    result = SecondAutocorrelationEnv().verify_construction(np.array(heights))
    assert result.ok, result.message
    assert abs(result.score - _exact_c2([float(x) for x in heights])) < 1e-9
    assert abs(result.score - 0.8962) < 1e-4  # AlphaEvolve V1, published to 4 digits


def test_published_erdos_verifies(reference):
    h = np.array(reference["erdos_min_overlap_sequence"])
    result = ErdosMinOverlapEnv().verify_construction(h)
    assert result.ok, result.message
    assert abs(result.score - reference["published_values"]["erdos_C5_upper_bound"]) < 1e-9
    n = len(h)
    hs = [float(x) * (n / 2) / float(h.sum()) for x in h]  # all shifts, explicit loops
    best = max(sum(hs[i] * (1 - hs[i + s]) for i in range(n) if 0 <= i + s < n) for s in range(-n + 1, n))
    assert abs(result.score - best * 2 / n) < 1e-9
    assert abs(result.score - 0.3809230351) < 1e-9


def test_circle_packing_perturbations_are_rejected_with_a_reason(reference):
    env = CirclePackingEnv(n=26)
    centers, radii = _cp(reference, 26)
    cases = {}
    c = centers.copy(); c[1] = c[0] + [radii[0], 0.0]; cases["overlap"] = (c, radii, "overlap")
    c = centers.copy(); c[3, 0] = 1.2; cases["outside"] = (c, radii, "crosses the square")
    r = radii.copy(); r[5] = np.nan; cases["nan"] = (centers, r, "finite")
    cases["all_nan_centers"] = (np.full_like(centers, np.nan), radii, "finite")
    r = radii.copy(); r[7] = np.inf; cases["inf"] = (centers, r, "finite")
    r = radii.copy(); r[2] = -0.01; cases["negative"] = (centers, r, "negative radius")
    cases["wrong_n"] = (centers[:25], radii[:25], "shape")
    for name, (cc, rr, reason) in cases.items():
        result = env.verify_construction(cc, rr)
        assert result.status == "invalid" and result.reward == 0.0 and result.score is None, name
        assert reason in result.message, (name, result.message)


def test_sequence_perturbations_are_rejected_with_a_reason(reference):
    ac1 = np.array(reference["ac1_step_heights"])
    bad = ac1.copy(); bad[3] = np.nan
    r = FirstAutocorrelationEnv().verify_construction(bad)
    assert r.status == "invalid" and "finite" in r.message
    assert FirstAutocorrelationEnv().verify_construction(np.zeros(10)).status == "invalid"
    r = FirstAutocorrelationEnv().verify_construction(np.full(10, 0.000999))  # sum 0.00999 < 0.01
    assert r.status == "invalid" and r.reward == 0.0 and "0.01" in r.message
    h = np.array(reference["erdos_min_overlap_sequence"])
    bad = h.copy(); bad[40] = 1.5
    r = ErdosMinOverlapEnv().verify_construction(bad)
    assert r.status == "invalid" and "[0, 1]" in r.message
    bad = h.copy(); bad[:] = 0.0; bad[0] = 1.0  # sum 1 -> rescaled to n/2 = 47.5 > 1
    r = ErdosMinOverlapEnv().verify_construction(bad)
    assert r.status == "invalid" and "exceeds 1" in r.message


def test_ac1_clips_negatives_and_caps_at_1000_as_ttt_discover(reference):
    """Negative heights count as 0 and heights above 1000 as 1000 (accepted, not rejected, not rescaled); the
    construction kept is the one returned. Expected C1 by explicit loops on the hand-clipped sequence."""
    ac1 = np.array(reference["ac1_step_heights"])
    env = FirstAutocorrelationEnv()
    bad = ac1.copy(); bad[10] = -0.5; bad[20] = 5e6
    clipped = [min(max(float(x), 0.0), 1000.0) for x in bad]
    n = len(clipped)
    conv_max = max(sum(clipped[i] * clipped[k - i] for i in range(max(0, k - n + 1), min(k, n - 1) + 1))
                   for k in range(2 * n - 1))
    r = env.verify_construction(bad)
    assert r.ok, r.message
    assert r.score == pytest.approx(2 * n * conv_max / sum(clipped) ** 2, rel=1e-12)
    assert r.reward == 1.0 / r.score and r.value == -r.score  # reward 1/C1 with no epsilon
    assert r.construction[10] == -0.5 and r.construction[20] == 5e6
    # Capping is not rescaling: one huge height changes C1, a scale-invariant rescale would not.
    assert env.verify_construction(ac1 * 1e4).score != pytest.approx(env.verify_construction(ac1).score, rel=1e-6)


def test_ac2_follows_ttt_discovers_rules_bit_for_bit(reference):
    """TTT-Discover's AC2 verifier: negatives count as 0, heights above 1000 as 1000 (not rescaled), a sum
    below 0.01 or a NaN is invalid. Expected values: tests/reference_ttt.py's restatement (its loop, its order of
    summation), so the scores are equal, not close; and the exact triangle integral, to 1e-12."""
    ac2 = np.array(reference["ac2_step_heights"])
    env = SecondAutocorrelationEnv()
    published = env.verify_construction(ac2)
    assert published.score == ref.ac2_c2([float(x) for x in ac2]) and published.reward == published.score
    bad = ac2.copy(); bad[3] = -0.25; bad[7] = 5e6
    r = env.verify_construction(bad)
    assert r.ok, r.message
    clipped = [min(max(float(x), 0.0), 1000.0) for x in bad]
    assert r.score == ref.ac2_c2([float(x) for x in bad]) == pytest.approx(_exact_c2(clipped), rel=1e-12)
    assert r.construction[3] == -0.25 and r.construction[7] == 5e6  # the construction kept is the one returned
    # capping is not rescaling: C2 is scale-invariant, so only the cap makes the x1e4 copy score differently
    assert env.verify_construction(ac2 * 1e4).score != pytest.approx(published.score, rel=1e-6)
    assert env.verify_construction(ac2 * 1e-2).score == pytest.approx(published.score, rel=1e-12)
    rng = np.random.default_rng(7)
    long = rng.normal(0.3, 1.0, 5000)  # a third negative, clipped
    assert env.verify_construction(long).score == ref.ac2_c2(long.tolist())
    for heights, reason in (([-1.0, 0.0, 0.004], "sum must be >= 0.01"), ([1.0, np.nan], "finite"),
                            ([0.0] * 60, "sum must be >= 0.01")):
        r = env.verify_construction(np.array(heights))
        assert r.status == "invalid" and reason in r.message and r.reward == 0.0 and r.score is None, heights
        assert ref.ac2_c2([float(x) for x in heights]) is None


def test_partial_credit_for_a_near_valid_packing(reference):
    centers, radii = _cp(reference, 26)
    grown = radii.copy(); grown[0] += 2e-4  # now overlaps / crosses by about 2e-4
    strict = CirclePackingEnv(n=26).verify_construction(centers, grown)
    lenient = CirclePackingEnv(n=26, reward=RewardSpec(partial_credit=0.5, partial_credit_scale=1e-3)).verify_construction(centers, grown)
    assert strict.status == lenient.status == "invalid" and strict.reward == 0.0
    expected = 0.5 * (1 - lenient.extra["violation"] / 1e-3) * grown.sum()
    assert lenient.reward == pytest.approx(expected) and 0 < lenient.reward < radii.sum()
    far = radii.copy(); far[0] += 0.05
    assert CirclePackingEnv(n=26, reward={"partial_credit": 0.5}).verify_construction(centers, far).reward == 0.0
