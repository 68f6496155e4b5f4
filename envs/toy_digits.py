"""A toy verifiable task that a tiny random-weight model can learn on a CPU in minutes.

The model writes digits; the first `length` of them are the heights of a step function, scored with AC1's
first autocorrelation constant C1 = 2n * max(a * a) / (sum a)^2 (lower is better; a flat sequence gives
exactly 2). The reward is smooth: coverage * 2 / C1, coverage = digits found / length. With strict=True only
the first `length` characters count (no spaces or words allowed), a format a random-weight tiny model
learns far more slowly than the shape of the heights.
"""

from __future__ import annotations

from dataclasses import dataclass

import time

import numpy as np

from envs.base import Env, State, VerifyResult, failed


def autocorrelation_c1(heights: np.ndarray) -> float:
    """C1 of the step function with these non-negative heights on n equal pieces."""
    a = np.asarray(heights, dtype=np.float64)
    total = a.sum()
    return float(2 * len(a) * np.max(np.convolve(a, a)) / (total * total))


@dataclass
class ToyDigitsEnv(Env):
    name: str = "toy_digits"
    needs_complete_answer = False  # the answer is the first digits written; running out of tokens is normal
    length: int = 12
    strict: bool = False
    verify_delay_s: float = 0.0  # a stand-in for an expensive verifier (resume and pool tests, benches)

    def statement(self) -> str:
        return (
            f"Write {self.length} digits. They are the heights of a step function; "
            "make its autoconvolution as flat as possible."
        )

    def parse(self, completion: str) -> str | None:
        return completion

    def verify(self, answer: str, state: State) -> VerifyResult:
        if self.verify_delay_s > 0:
            time.sleep(self.verify_delay_s)
        chars = answer[: self.length] if self.strict else answer
        digits = [int(c) for c in chars if "0" <= c <= "9"][: self.length]
        if not digits:
            return failed("format_error", "no digits in the answer")
        heights = np.array(digits, dtype=np.float64)
        if heights.sum() <= 0:
            return failed("invalid", "all digits are zero: C1 is undefined", construction=digits)
        c1 = autocorrelation_c1(heights)
        coverage = len(digits) / self.length
        status = "ok" if len(digits) == self.length else "invalid"
        message = "" if status == "ok" else f"only {len(digits)} of {self.length} digits"
        return VerifyResult(
            status=status,
            reward=coverage * 2.0 / c1,
            score=c1,
            value=-c1 if status == "ok" else None,
            construction=digits,
            message=message,
        )
