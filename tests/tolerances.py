"""Float tolerances derived from dtype, reduction size and magnitude, not tuned to one CPU.

Two float32 computations of the same value that differ only in summation order (AVX2 vs AVX-512 kernels,
oneDNN/MKL blocking, packed vs padded batches, no_grad vs autograd kernels) differ by rounding. Summing n
terms whose magnitudes add up to `scale` changes the result by at most ~n * eps * scale (every rounding the
same way) and typically by sqrt(n) * eps * scale (random rounding). We use the typical bound times SAFETY:

    tol = eps(dtype) * sqrt(n) * scale * SAFETY

`scale` is the size of the TERMS, not of the result: a loss that is a sum of O(1) terms cancelling to 0.01
still carries the rounding of O(1) numbers (a relative tolerance on the result fails there; it did on an
AMD EPYC with AVX-512: -1.9732653 vs -1.9732693 at rel 1e-6, 0.01377486 vs 0.01377470 at rel 1e-5).

For a model's per-token log-probability the longest reduction is the log-sum-exp over the vocabulary, and
every layer's matmuls feed into it; `MODEL_N` is the sum of the reduction lengths on that path for the tiny
test model (2 layers, hidden 128, MLP 256, vocab 2048), so its error estimate is eps * sqrt(MODEL_N) * |logit|.
Comparisons meant to be exact (integer tokens, bit-equal checkpoints, the same kernels on the same inputs)
stay exact; pure-Python float (float64) arithmetic keeps pytest.approx's default rel 1e-6, which is ~4e9 ulp.
"""

from __future__ import annotations

import math

import numpy as np

SAFETY = 4  # headroom over the sqrt(n) estimate; real bugs in these tests move values by >= 1e-2
EPS = {"float64": float(np.finfo(np.float64).eps), "float32": float(np.finfo(np.float32).eps),
       "bfloat16": 2.0 ** -7, "float16": float(np.finfo(np.float16).eps)}
TINY_HIDDEN, TINY_MLP, TINY_LAYERS, TINY_VOCAB = 128, 256, 2, 2048
MODEL_N = TINY_LAYERS * (4 * TINY_HIDDEN + TINY_MLP) + TINY_HIDDEN + TINY_VOCAB  # q,k,v,o + MLP per layer, head, lse


def tol(scale: float, n: int = 1, dtype: str = "float32", safety: float = SAFETY) -> float:
    """Absolute tolerance for a value computed by reductions of `n` terms whose magnitudes sum to `scale`."""
    return EPS[dtype] * math.sqrt(max(1, n)) * max(float(scale), 1e-30) * safety


def logprob_tol(logprobs, n: int = MODEL_N) -> float:
    """Per-token log-probabilities of the tiny model (float32): scaled by the largest one (|logit - lse|)."""
    return tol(max(1.0, float(_abs(logprobs).max())), n)


def loss_tol(logprobs, weights=1.0, n: int = MODEL_N) -> float:
    """A loss that is a weighted sum over tokens of per-token log-probability terms (ratios in PPO-like losses
    are ~1): each token brings its own independent logprob error, so they add in quadrature and the scale is
    the L2 norm of weight * logprob over tokens, at least 1."""
    lp = _abs(logprobs)
    w = _abs(weights) if not isinstance(weights, (int, float)) else abs(weights)
    return tol(max(1.0, float(((lp * w) ** 2).sum()) ** 0.5), n)


def grad_rel(n: int = MODEL_N) -> float:
    """Relative tolerance for a gradient tensor compared by its norm (||a - b|| <= grad_rel * ||b||)."""
    return tol(1.0, n)


def grad_atol(grad, n: int = MODEL_N) -> float:
    """Absolute tolerance for gradient entries: scaled by the tensor's largest entry."""
    return tol(float(_abs(grad).max()), n)


def _abs(x):
    if hasattr(x, "detach"):
        return x.detach().abs().double()
    return np.abs(np.asarray(x, dtype=np.float64))


def weight_scale(data, quadratic: bool = False) -> float:
    """The largest |advantage| or |weight| of tinker datums (at least 1): what multiplies each token's logprob
    error in the loss. `quadratic`: losses like DRO's (lp - q)^2 multiply it by 2|lp - q| as well (<= 2 * 20 for
    the tiny model's logprobs and the tests' sampler logprobs)."""
    scale = 1.0
    for d in data:
        for key in ("advantages", "weights"):
            if key in d.loss_fn_inputs:
                scale = max(scale, float(d.loss_fn_inputs[key].to_torch().abs().max()))
    return scale * (40.0 if quadratic else 1.0)
