"""Per-group advantage estimators (TTT-Discover's compute_advantages and the ablations).

entropic_adaptive_beta: q_beta = softmax(beta * (r - max r)); beta is chosen so that KL(q_beta || uniform)
= ln 2 (doubling bracket up to 2^20, then 60 bisection steps, beta = hi); A_i = e_i / (Z_-i + 1e-12) - 1 with
e_i = exp(beta * (r_i - max r)) and the leave-one-out mean Z_-i. Reference: TTT_DISCOVER.md section 1.
"""

from __future__ import annotations

import math

import numpy as np

KL_TARGET = math.log(2.0)
BETA_MAX = 1e6


def _kl_to_uniform(beta: float, rewards_K: np.ndarray) -> float:
    z = beta * (rewards_K - rewards_K.max())
    log_q = z - np.log(np.exp(z).sum())
    return float((np.exp(log_q) * (log_q + math.log(len(rewards_K)))).sum())


def adaptive_beta(rewards_K: np.ndarray, kl_target: float = KL_TARGET) -> float:
    """The beta at which the tilted distribution is kl_target away from uniform (approached from above)."""
    if len(rewards_K) < 2:
        return 0.0
    lo, hi = 0.0, 1.0
    if _kl_to_uniform(hi, rewards_K) < kl_target:
        while hi < BETA_MAX and _kl_to_uniform(hi, rewards_K) < kl_target:
            hi *= 2.0
        if _kl_to_uniform(hi, rewards_K) < kl_target:
            return hi  # unreachable target, e.g. all rewards equal
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _kl_to_uniform(mid, rewards_K) < kl_target:
            lo = mid
        else:
            hi = mid
    return hi


def entropic_advantages(rewards_K: np.ndarray, beta: float) -> np.ndarray:
    """Leave-one-out entropic advantages for a fixed beta (not zero-mean, not std-normalised)."""
    e_K = np.exp(beta * (rewards_K - rewards_K.max()))
    if len(e_K) == 1:
        z_K = e_K
    else:
        z_K = (e_K.sum() - e_K) / (len(e_K) - 1)
    return e_K / (z_K + 1e-12) - 1.0


def compute_advantages(rewards_K, estimator: str = "entropic_adaptive_beta",
                       beta: float = 2.0) -> tuple[np.ndarray, float]:
    """Advantages for one group and the beta used (nan for estimators without one)."""
    r_K = np.asarray(rewards_K, dtype=np.float64)
    if estimator == "entropic_adaptive_beta":
        b = adaptive_beta(r_K)
        return entropic_advantages(r_K, b), b
    if estimator == "entropic":
        return entropic_advantages(r_K, beta), beta
    if estimator == "mean_baseline":
        return r_K - r_K.mean(), math.nan
    if estimator == "grpo":
        std = r_K.std()
        return (r_K - r_K.mean()) / (std + 1e-6), math.nan
    raise ValueError(f"unknown advantage estimator {estimator!r}: use entropic_adaptive_beta, entropic, "
                     "mean_baseline or grpo")
