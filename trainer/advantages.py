"""Per-group advantage estimators (TTT-Discover's compute_advantages and the ablations).

entropic_adaptive_beta: q_beta = softmax(beta * (r - max r)); beta is chosen so that KL(q_beta || uniform)
= ln 2 (doubling bracket up to 2^20, then 60 bisection steps, beta = hi); A_i = e_i / (Z_-i + 1e-12) - 1 with
e_i = exp(beta * (r_i - max r)) and the leave-one-out mean Z_-i. Reference: TTT_DISCOVER.md section 1 and
`tinker_cookbook/rl/train.py::compute_advantages` of the original code.

The entropic estimators and mean_baseline compute in float32 torch with the original's operations, in its
order (rewards rounded to float32, beta rounded to float32 at every KL evaluation, logsumexp), so equal
rewards give bit-identical advantages and beta. That float32 is the original's precision: rewards closer
than a float32 ulp (2.4e-7 at 2.6) are tied, and a group of two distinct rewards ends its bisection where
exp(-beta * gap) underflows float32 resolution. grpo (not in the original) computes in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch

KL_TARGET = math.log(2.0)
BETA_MAX = 1e6
BISECTION_STEPS = 60
EPS = 1e-12


def _rewards(rewards_K) -> torch.Tensor:
    """The original's `torch.tensor(list_of_rewards)`: float32, whatever torch's default dtype is set to."""
    return torch.tensor([float(r) for r in rewards_K], dtype=torch.float32)


def _kl_to_uniform(beta: float, r_K: torch.Tensor) -> float:
    """KL(q_beta || uniform), beta rounded to float32 as the original's `r.new_tensor(beta)`."""
    logits_K = r_K.new_tensor(beta) * (r_K - r_K.max(dim=0, keepdim=True).values)
    log_q_K = logits_K - torch.logsumexp(logits_K, dim=0, keepdim=True)
    return float((torch.exp(log_q_K) * (log_q_K + math.log(r_K.shape[0]))).sum(dim=0).item())


def adaptive_beta(r_K: torch.Tensor, kl_target: float = KL_TARGET) -> torch.Tensor:
    """The float32 beta at which the tilted distribution is kl_target away from uniform (from above)."""
    if r_K.shape[0] < 2:
        return r_K.new_tensor(0.0)
    lo, hi = 0.0, 1.0
    if _kl_to_uniform(hi, r_K) < kl_target:
        while hi < BETA_MAX and _kl_to_uniform(hi, r_K) < kl_target:
            hi *= 2.0
        if _kl_to_uniform(hi, r_K) < kl_target:
            return r_K.new_tensor(hi)  # unreachable target, e.g. all rewards equal
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if _kl_to_uniform(mid, r_K) < kl_target:
            lo = mid
        else:
            hi = mid
    return r_K.new_tensor(hi)


def _leave_one_out(e_K: torch.Tensor, z_sum: torch.Tensor) -> torch.Tensor:
    """A_i = e_i / (Z_-i + 1e-12) - 1 with Z_-i = (sum e - e_i) / (K - 1); Z = e for K = 1."""
    K = e_K.shape[0]
    z_K = e_K if K == 1 else (z_sum - e_K) / (K - 1)
    return e_K / (z_K + EPS) - 1.0


def compute_advantages(rewards_K, estimator: str = "entropic_adaptive_beta",
                       beta: float = 2.0) -> tuple[np.ndarray, float]:
    """Advantages for one group (float64 array holding the float32 values) and the beta used (nan for
    estimators without one)."""
    if estimator == "entropic_adaptive_beta":
        r_K = _rewards(rewards_K)
        b = adaptive_beta(r_K)
        e_K = torch.exp(b * (r_K - r_K.max(dim=0, keepdim=True).values))
        return _leave_one_out(e_K, e_K.sum(dim=0, keepdim=True)).double().numpy(), float(b)
    if estimator == "entropic":  # fixed beta: a Python float times the float32 rewards, as the original
        r_K = _rewards(rewards_K)
        e_K = torch.exp(beta * (r_K - r_K.max(dim=-1, keepdim=True)[0]))
        return _leave_one_out(e_K, e_K.sum()).double().numpy(), beta
    if estimator == "mean_baseline":
        r_K = _rewards(rewards_K)
        return (r_K - r_K.mean()).double().numpy(), math.nan
    if estimator == "grpo":
        r_K = np.asarray(rewards_K, dtype=np.float64)
        std = r_K.std()
        return (r_K - r_K.mean()) / (std + 1e-6), math.nan
    raise ValueError(f"unknown advantage estimator {estimator!r}: use entropic_adaptive_beta, entropic, "
                     "mean_baseline or grpo")
