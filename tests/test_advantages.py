"""trainer/advantages.py against an independent 50-digit reference of TTT_DISCOVER.md section 1.

The reference below re-derives every formula with mpmath (no code shared with the module under test):
KL(q_beta || uniform), the doubling bracket (hi <= 2^20) + 60 bisection steps returning hi, and the
leave-one-out advantages A_i = e_i / (Z_-i + 1e-12) - 1. The module computes in float32 as the original
does (bit-for-bit agreement with it: tests/test_reference_agreement.py), so the exact values are compared on
the float32-rounded rewards, at float32 tolerances (see assert_matches_reference).
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest

from trainer.advantages import compute_advantages

mp.mp.dps = 50
LN2 = mp.log(2)


def ref_kl(beta, rewards) -> mp.mpf:
    """KL(q_beta || Uniform_K) with q_beta = softmax(beta * (r - max r)), at 50 digits."""
    r = [mp.mpf(x) for x in rewards]
    r_max = max(r)
    weights = [mp.exp(mp.mpf(beta) * (x - r_max)) for x in r]
    total = mp.fsum(weights)
    K = len(r)
    return mp.fsum((w / total) * (mp.log(w / total) + mp.log(K)) for w in weights)


def ref_beta(rewards) -> mp.mpf:
    """The doc's rule: beta = 0 for K < 2; bracket by doubling from 1 while hi < 1e6; bisect 60 times; hi."""
    if len(rewards) < 2:
        return mp.mpf(0)
    lo, hi = mp.mpf(0), mp.mpf(1)
    if ref_kl(hi, rewards) < LN2:
        while hi < 10**6 and ref_kl(hi, rewards) < LN2:
            hi *= 2
        if ref_kl(hi, rewards) < LN2:
            return hi
    for _ in range(60):
        mid = (lo + hi) / 2
        if ref_kl(mid, rewards) < LN2:
            lo = mid
        else:
            hi = mid
    return hi


def ref_advantages(rewards, beta) -> list[mp.mpf]:
    r = [mp.mpf(x) for x in rewards]
    r_max = max(r)
    e = [mp.exp(mp.mpf(beta) * (x - r_max)) for x in r]
    K = len(e)
    z = e if K == 1 else [(mp.fsum(e) - e_i) / (K - 1) for e_i in e]
    return [e_i / (z_i + mp.mpf("1e-12")) - 1 for e_i, z_i in zip(e, z)]


def f32(rewards) -> list[float]:
    return [float(np.float32(r)) for r in rewards]


def assert_matches_reference(rewards, beta_rtol=1e-6, adv_rtol=1e-5, adv_atol=1e-5):
    """Float32 tolerances: KL is evaluated in float32 (resolution ~1e-7 around ln 2), which moves the
    bisection's beta by ~1e-7 relative (measured <= 1.6e-7); A = e / Z - 1 in float32 is within ~1e-6
    absolute (measured <= 5.4e-6 where A ~ 28, the cancellation in w - 1 limits the relative error near -1)."""
    adv_K, beta = compute_advantages(rewards)
    expected_beta = ref_beta(f32(rewards))
    expected_K = ref_advantages(f32(rewards), expected_beta)
    assert beta == pytest.approx(float(expected_beta), rel=beta_rtol)
    np.testing.assert_allclose(adv_K, [float(a) for a in expected_K], rtol=adv_rtol, atol=adv_atol)
    return adv_K, beta


def gaussian_rewards() -> np.ndarray:
    # The doc's test vector: these 64 draws give beta 1.44, A_max 6.50, 18/64 positive.
    return np.random.default_rng(0).standard_normal(64)


def test_gaussian_group_matches_reference_and_doc_numbers():
    rewards_K = gaussian_rewards()
    adv_K, beta = assert_matches_reference(rewards_K)
    assert beta == pytest.approx(1.44, abs=0.005)
    assert adv_K.max() == pytest.approx(6.50, abs=0.005)
    assert adv_K.min() == pytest.approx(-0.986, abs=0.0005)
    assert int((adv_K > 0).sum()) == 18
    assert adv_K.mean() == pytest.approx(0.03, abs=0.005)  # not zero-mean by construction
    # The chosen beta sits on the target to float32 resolution (from above in the float32 KL it bisects on).
    assert abs(ref_kl(beta, f32(rewards_K)) - LN2) < 1e-6
    # Not std-normalised either: the best sample's advantage is far above 1.
    assert int(np.argmax(adv_K)) == int(np.argmax(rewards_K))


def test_single_success_among_zeros():
    rewards_K = [0.0] * 63 + [1.0]
    adv_K, beta = assert_matches_reference(rewards_K)
    assert beta == pytest.approx(3.36, abs=0.005)
    assert adv_K[-1] == pytest.approx(27.8, abs=0.05)
    np.testing.assert_allclose(adv_K[:-1], -0.306, atol=0.0005)
    # Hand check of the LOO form at the returned beta: e_top = 1, e_other = exp(-beta).
    e_other = math.exp(-beta)
    assert adv_K[-1] == pytest.approx(1.0 / (e_other + 1e-12) - 1.0, rel=1e-6)
    z_other = (62 * e_other + 1.0) / 63
    assert adv_K[0] == pytest.approx(e_other / (z_other + 1e-12) - 1.0, rel=1e-6)


def test_all_equal_group_hits_the_bracket_cap():
    adv_K, beta = assert_matches_reference([0.7] * 64)
    assert beta == 2.0**20  # KL is 0 for every beta: the target is unreachable
    np.testing.assert_array_equal(adv_K, 0.0)  # 1/(1 + 1e-12) - 1, and 1 + 1e-12 is 1 in float32


def test_single_rollout_group():
    adv_K, beta = assert_matches_reference([5.0])
    assert beta == 0.0
    assert adv_K.shape == (1,)
    assert adv_K[0] == 0.0  # Z = e for K = 1: 1 / (1 + 1e-12) - 1, and 1 + 1e-12 rounds to 1 in float32


def test_two_rollout_group_target_only_reached_by_rounding():
    # With K = 2 and distinct rewards, KL(beta) = ln 2 - O(beta exp(-beta * gap)) < ln 2 for every finite beta:
    # in exact arithmetic the rule would end at the cap 2^20. At finite precision KL rounds to ln 2 once
    # exp(-beta * gap) is below the precision: beta * gap ~ 20 in float32 (the original's precision, and ours),
    # ~41 in float64, ~122 at 50 digits, and the bisection converges there. The advantages hardly care: worse
    # sample -1, better sample 1 / (exp(-beta * gap) + 1e-12) - 1 ~ 1e12 either way.
    rewards_K = [3.0, -2.0]
    adv_K, beta = compute_advantages(rewards_K)
    assert 15 < beta * 5.0 < 25
    assert 100 < ref_beta(rewards_K) * 5 < 130
    assert 0 < LN2 - ref_kl(beta, rewards_K) < 1e-7  # below the target by less than float32 resolution
    # The better sample's Z_-i = (sum e - e_i) / (K - 1) = (1 + 1.5e-9) - 1 cancels to 0 in float32 (as in the
    # original), so A_top = 1e12 - 1 instead of (1.5e-9 + 1e-12)^-1: off by orders of magnitude, in a regime
    # where A is ~1e12 anyway. Checked against the cancelled form, and the worse sample exactly.
    np.testing.assert_allclose(adv_K[0], np.float32(1e12) - 1, rtol=1e-7)
    assert adv_K[1] == pytest.approx(-1.0, abs=1e-12)
    # Tied pair: KL = 0 everywhere, the cap, zero advantages.
    adv_tied, beta_tied = compute_advantages([1.0, 1.0])
    assert beta_tied == 2.0**20
    np.testing.assert_allclose(adv_tied, 0.0, atol=1e-11)


@pytest.mark.parametrize("scale, shift", [(7.0, -2.0), (1e3, 1e3)])
def test_positive_affine_reward_transform_leaves_advantages_unchanged(scale, shift):
    rewards_K = gaussian_rewards()
    adv_K, beta = compute_advantages(rewards_K)
    adv_affine_K, beta_affine = compute_advantages(rewards_K * scale + shift)
    # beta absorbs the scale, to float32 rounding of the shifted rewards (measured 1.3e-7 relative)
    assert beta_affine * scale == pytest.approx(beta, rel=1e-6)
    np.testing.assert_allclose(adv_affine_K, adv_K, rtol=0, atol=5e-6)  # measured <= 1.4e-6


def test_rewards_are_rounded_to_float32_as_in_the_original():
    """x 1e-5 then + 3 leaves a spread of ~3e-5 on a value of 3, where a float32 ulp is 2.4e-7: the rewards
    keep ~7 bits, so A moves by ~0.1 (the doc's 1.2e-10 holds in float64 only). Sub-ulp differences tie."""
    rewards_K = gaussian_rewards()
    adv_K, _ = compute_advantages(rewards_K)
    adv_affine_K, _ = compute_advantages(rewards_K * 1e-5 + 3.0)
    assert 1e-3 < np.abs(adv_affine_K - adv_K).max() < 0.5
    adv_tied, beta_tied = compute_advantages([2.6359773948, 2.6359773949])  # 1e-10 apart: one float32 value
    assert beta_tied == 2.0 ** 20 and np.all(adv_tied == 0.0)


def test_fixed_beta_entropic():
    rewards_K = [0.5, -1.0, 2.0, 0.0, 2.0]
    adv_K, beta = compute_advantages(rewards_K, "entropic")
    assert beta == 2.0  # the doc's default adv_estimator_beta
    # float32 arithmetic: ~1e-7 relative per operation, a few operations (measured <= 3.4e-7)
    np.testing.assert_allclose(adv_K, [float(a) for a in ref_advantages(rewards_K, 2)], rtol=1e-6)
    adv_b_K, beta_b = compute_advantages(rewards_K, "entropic", beta=0.5)
    assert beta_b == 0.5
    np.testing.assert_allclose(adv_b_K, [float(a) for a in ref_advantages(rewards_K, 0.5)], rtol=1e-6)
    # Hand check of one entry at beta = 2: r_max = 2, e = exp(2 * (r - 2)).
    e = [math.exp(2 * (r - 2.0)) for r in rewards_K]
    z_first = (sum(e) - e[0]) / 4
    assert adv_K[0] == pytest.approx(e[0] / (z_first + 1e-12) - 1, rel=1e-6)


def test_mean_baseline_and_grpo_by_hand():
    rewards_K = [1.0, 2.0, 4.0, 9.0]
    mean = (1 + 2 + 4 + 9) / 4  # 4.0
    adv_K, beta = compute_advantages(rewards_K, "mean_baseline")
    assert math.isnan(beta)
    np.testing.assert_allclose(adv_K, [-3.0, -2.0, 0.0, 5.0], rtol=0, atol=1e-15)
    # grpo: population std (ddof 0) + 1e-6; deviations -3, -2, 0, 5 -> variance 38 / 4 = 9.5.
    std = math.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2 + (9 - mean) ** 2) / 4)
    assert std == pytest.approx(math.sqrt(9.5))
    adv_grpo_K, beta_grpo = compute_advantages(rewards_K, "grpo")
    assert math.isnan(beta_grpo)
    np.testing.assert_allclose(adv_grpo_K, [d / (std + 1e-6) for d in (-3, -2, 0, 5)], rtol=1e-14)
    # A constant group gives zero advantages in both, not a division by zero.
    np.testing.assert_array_equal(compute_advantages([3.0] * 4, "grpo")[0], 0.0)


def test_unknown_estimator():
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        compute_advantages([0.0, 1.0], "ppo")
