"""The KL-to-base penalty folded into per-token advantages, as TTT-Discover's `incorporate_kl_penalty`
(kl_discount_factor = 0): for every action token t of every trained sequence,

    A_t += lambda * (avg_kl - (logp_sampler_t - logp_base_t)),

where avg_kl is the mean of (logp_sampler - logp_base) over all action tokens of the batch. Forced tokens
(mask 0, e.g. a two-phase prefill) are not actions: they keep advantage 0 and do not enter avg_kl.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def fold_kl_penalty(advantages_D: Sequence[np.ndarray], sampler_logprobs_D: Sequence[np.ndarray],
                    base_logprobs_D: Sequence[np.ndarray], masks_D: Sequence[np.ndarray],
                    coef: float) -> tuple[list[np.ndarray], float]:
    """Per-sequence arrays over completion tokens -> (shaped advantages per sequence, avg_kl)."""
    kl_D = [np.asarray(s, np.float64) - np.asarray(b, np.float64)
            for s, b in zip(sampler_logprobs_D, base_logprobs_D)]
    chosen_D = [np.asarray(m, bool) for m in masks_D]
    n_actions = sum(int(c.sum()) for c in chosen_D)
    avg_kl = sum(float(kl[c].sum()) for kl, c in zip(kl_D, chosen_D)) / max(n_actions, 1)
    shaped = [np.where(c, np.asarray(a, np.float64) + coef * (avg_kl - kl), 0.0)
              for a, kl, c in zip(advantages_D, kl_D, chosen_D)]
    return shaped, avg_kl
