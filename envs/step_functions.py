"""Step functions given by their heights on n equal pieces: checks and the autoconvolution.

AC1 follows TTT-Discover's verifier exactly (clip negatives to 0, cap at 1000, sum >= 0.01). AC2 validates
heights as a 1-D finite non-negative array with a positive sum and scales them by their maximum before
convolving (C2 is scale-invariant, and this keeps huge heights from overflowing).
"""

from __future__ import annotations

import numpy as np

DIRECT_CONVOLUTION_MAX_N = 20000  # above this np.convolve (O(n^2)) is slow; FFT error is ~1e-15 relative


def check_heights(heights: np.ndarray, min_len: int, max_len: int) -> tuple[str, float]:
    """('', 0.0) for usable heights, else (reason, violation >= 0; inf when nothing can be scored)."""
    if heights.ndim != 1:
        return f"heights must be a 1-D sequence, got shape {heights.shape}", np.inf
    if not min_len <= heights.size <= max_len:
        return f"need between {min_len} and {max_len} heights, got {heights.size}", np.inf
    if not np.all(np.isfinite(heights)):
        return "heights must all be finite (found NaN or inf)", np.inf
    if not np.all(heights >= 0):
        i = int(np.argmin(heights))
        scale = float(np.max(np.abs(heights)))
        return f"height {i} is negative ({heights[i]:.6g}); heights must be >= 0", float(-heights[i] / scale)
    if not heights.sum() > 0:
        return "all heights are zero", np.inf
    return "", 0.0


def autoconvolution(heights: np.ndarray) -> np.ndarray:
    """The discrete autoconvolution a * a of the heights scaled to max 1 (length 2n - 1)."""
    a = heights / np.max(heights)
    if a.size <= DIRECT_CONVOLUTION_MAX_N:
        return np.convolve(a, a)
    from scipy.signal import fftconvolve

    return np.maximum(fftconvolve(a, a), 0.0)  # exact result is >= 0; clip FFT round-off


AC1_MAX_HEIGHT = 1000.0  # TTT-Discover caps every height here (np.minimum); it does not rescale
AC1_MIN_TOTAL = 0.01  # a smaller sum of the clipped and capped heights is invalid


def first_autocorrelation_c1(heights: np.ndarray) -> tuple[float | None, str]:
    """(C1, '') or (None, reason): TTT-Discover's AC1 rule (tasks/alphaevolve_ac/verifier_ae.py).

    Heights must be finite; negatives become 0 and heights above 1000 become 1000 (accepted, not rejected);
    a sum below 0.01 after that is invalid. C1 = 2n * max(np.convolve(a, a)) / (sum a)^2 for f on
    [-1/4, 1/4], computed exactly as the reference does (direct convolution, no rescaling), so equal input
    gives the bit-identical C1.
    """
    if heights.ndim != 1 or heights.size == 0:
        return None, f"heights must be a non-empty 1-D sequence, got shape {heights.shape}"
    if not np.all(np.isfinite(heights)):
        return None, "heights must all be finite (found NaN or inf)"
    a = np.minimum(np.maximum(heights, 0.0), AC1_MAX_HEIGHT)
    total = np.sum(a)
    if total < AC1_MIN_TOTAL:
        return None, f"the heights sum to {total:.3g} after clipping to [0, 1000]; the sum must be >= 0.01"
    return float(2 * a.size * np.max(np.convolve(a, a)) / total ** 2), ""


def second_autocorrelation_c2(heights: np.ndarray) -> float:
    """C2 = ||f*f||_2^2 / (||f*f||_1 ||f*f||_inf), f*f piecewise linear through the convolution values.

    f*f of a step function is exactly piecewise linear, with knots at the M = 2n - 1 convolution values
    and zeros at both ends (M + 2 equally spaced points); on a piece of width h between values y1, y2,
    the integral of the square is h/3 (y1^2 + y1 y2 + y2^2). C2 is invariant to the scale of f and of x.
    """
    conv = autoconvolution(heights)
    y = np.concatenate(([0.0], conv, [0.0]))
    h = 1.0 / (conv.size + 1)
    l2_squared = float(np.sum(h / 3.0 * (y[:-1] ** 2 + y[:-1] * y[1:] + y[1:] ** 2)))
    l1 = float(np.sum(np.abs(conv)) / (conv.size + 1))
    linf = float(np.max(np.abs(conv)))
    return l2_squared / (l1 * linf)
