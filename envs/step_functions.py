"""Step functions given by their heights on n equal pieces: TTT-Discover's AC1 and AC2 verifiers.

Both follow the reference's `evaluate_sequence` rules (tasks/alphaevolve_ac/verifier_ae.py and
tasks/alphaevolve_ac2/ae_verifier.py): heights must be finite; negatives count as 0 and heights above 1000 as
1000 (accepted, not rejected); a sum below 0.01 is invalid; the convolution is the direct, unscaled
np.convolve, so equal input gives the reference's bit-identical value.
"""

from __future__ import annotations

import inspect

import numpy as np

MAX_HEIGHT = 1000.0  # TTT-Discover caps every height here (np.minimum); it does not rescale
MIN_TOTAL = 0.01  # a smaller sum of the clipped and capped heights is invalid


def clipped_heights(heights: np.ndarray) -> tuple[np.ndarray | None, str]:
    """(heights clipped to [0, 1000], '') or (None, reason): the reference's validity rules for AC1 and AC2."""
    if heights.ndim != 1 or heights.size == 0:
        return None, f"heights must be a non-empty 1-D sequence, got shape {heights.shape}"
    if not np.all(np.isfinite(heights)):
        return None, "heights must all be finite (found NaN or inf)"
    a = np.minimum(np.maximum(heights, 0.0), MAX_HEIGHT)
    total = np.sum(a)
    if total < MIN_TOTAL:
        return None, f"the heights sum to {total:.3g} after clipping to [0, 1000]; the sum must be >= 0.01"
    return a, ""


def first_autocorrelation_c1(heights: np.ndarray) -> tuple[float | None, str]:
    """(C1, '') or (None, reason). C1 = 2n * max(np.convolve(a, a)) / (sum a)^2 for f on [-1/4, 1/4]."""
    a, reason = clipped_heights(heights)
    if a is None:
        return None, reason
    return float(2 * a.size * np.max(np.convolve(a, a)) / np.sum(a) ** 2), ""


def second_autocorrelation_c2(heights: np.ndarray) -> tuple[float | None, str]:
    """(C2, '') or (None, reason). C2 = ||f*f||_2^2 / (||f*f||_1 ||f*f||_inf), f*f piecewise linear.

    f*f of a step function is exactly piecewise linear, with knots at the M = 2n - 1 convolution values and
    zeros at both ends, on linspace(-0.5, 0.5, M + 2); on a piece of width h between values y1, y2 the integral
    of the square is h/3 (y1^2 + y1 y2 + y2^2). The pieces are summed left to right (a cumulative sum), as the
    reference's loop does; ||f*f||_1 = sum / (M + 1) and ||f*f||_inf = max, as in the reference.
    """
    a, reason = clipped_heights(heights)
    if a is None:
        return None, reason
    conv = np.convolve(a, a)
    y = np.concatenate(([0.0], conv, [0.0]))
    h = np.diff(np.linspace(-0.5, 0.5, conv.size + 2))
    l2_squared = np.cumsum(h / 3 * (y[:-1] ** 2 + y[:-1] * y[1:] + y[1:] ** 2))[-1]
    l1 = np.sum(np.abs(conv)) / (conv.size + 1)
    linf = np.max(np.abs(conv))
    return float(l2_squared / (l1 * linf)), ""


def verifier_source(objective) -> str:
    """The code the prompt shows for `objective` (first_autocorrelation_c1 or second_autocorrelation_c2): the
    constants, the shared validity rules and the objective itself, exactly as they run."""
    return "\n".join([f"MAX_HEIGHT = {MAX_HEIGHT!r}", f"MIN_TOTAL = {MIN_TOTAL!r}", "",
                      inspect.getsource(clipped_heights), inspect.getsource(objective)])
