"""Tinker's built-in losses, token-level with SUM reduction (no means, no length normalisation).

Per token t: lp_t = learner logprob of the target, q_t = sampler logprob, A_t = advantage, w_t = weight,
r_t = exp(lp_t - q_t). Prompt tokens carry A = 0, q = 0 (w = 0 for SFT), so no extra mask is needed.
Reference: ../shared/docs/TINKER_API.md section 5.
"""

from __future__ import annotations

import torch

# Which loss_fn_inputs each loss reads, besides target_tokens.
LOSS_INPUTS: dict[str, tuple[str, ...]] = {
    "cross_entropy": ("weights",),
    "importance_sampling": ("logprobs", "advantages"),
    "ppo": ("logprobs", "advantages"),
    "cispo": ("logprobs", "advantages"),
    "dro": ("logprobs", "advantages"),
}
CONFIG_DEFAULTS: dict[str, dict[str, float]] = {
    "cross_entropy": {},
    "importance_sampling": {},
    "ppo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "cispo": {"clip_low_threshold": 0.0, "clip_high_threshold": 4.0},
    "dro": {"beta": 0.05},
}
UNSUPPORTED = {"gspo", "stable_reinforce", "custom"}
# Every loss also takes `temperature` (default 1): the learner scores log_softmax(logits / temperature), the
# distribution the sampler drew from at that temperature, so that importance ratios are 1 on-policy (sampled
# logprobs are the processed ones). An extension of Tinker's API, sent by the loop only when temperature != 1.


def check_loss(loss_fn: str, config: dict | None) -> dict[str, float]:
    """The full config for `loss_fn`; one clear error for unknown losses or config keys."""
    if loss_fn in UNSUPPORTED:
        raise ValueError(f"loss_fn {loss_fn!r} is not implemented here: use one of {sorted(LOSS_INPUTS)}")
    if loss_fn not in LOSS_INPUTS:
        raise ValueError(f"unknown loss_fn {loss_fn!r}: use one of {sorted(LOSS_INPUTS)}")
    merged = {**CONFIG_DEFAULTS[loss_fn], "temperature": 1.0}
    for key, value in (config or {}).items():
        if key not in merged:
            raise ValueError(f"loss_fn_config key {key!r} is not used by {loss_fn}: allowed {sorted(merged)}")
        merged[key] = float(value)
    if not 0 < merged["temperature"] < float("inf"):
        raise ValueError(f"loss_fn_config temperature must be > 0 (the sampling temperature), got "
                         f"{merged['temperature']}")
    return merged


def rows_with_gradient(loss_fn: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N,) bool: the tokens whose loss term can have a nonzero gradient. Zero-advantage (zero-weight) tokens,
    e.g. the prompt's, add exactly 0 to the loss and its gradient under every loss but dro, whose
    (lp - q)^2 penalty reaches every token."""
    if loss_fn == "cross_entropy":
        weights = inputs["weights"]
        return (weights != 0).reshape(weights.shape[0], -1).any(-1)
    if loss_fn == "dro":
        return torch.ones(inputs["advantages"].shape[0], dtype=torch.bool)
    return inputs["advantages"] != 0


def token_loss_sum(loss_fn: str, lp_T: torch.Tensor, inputs: dict[str, torch.Tensor],
                   config: dict[str, float]) -> torch.Tensor:
    """The summed loss of one datum's tokens. `lp_T` carries the gradient; inputs are constants."""
    if loss_fn == "cross_entropy":  # lp_T and weights are (N,) or (N, K) for top-K targets: the same sum
        return -(inputs["weights"] * lp_T).sum()
    q_T, adv_T = inputs["logprobs"], inputs["advantages"]
    ratio_T = torch.exp(lp_T - q_T)
    if loss_fn == "importance_sampling":
        return -(ratio_T * adv_T).sum()
    lo, hi = config.get("clip_low_threshold"), config.get("clip_high_threshold")
    if loss_fn == "ppo":
        return -torch.minimum(ratio_T * adv_T, ratio_T.clamp(lo, hi) * adv_T).sum()
    if loss_fn == "cispo":
        return -(ratio_T.clamp(lo, hi).detach() * lp_T * adv_T).sum()
    if loss_fn == "dro":
        return -(lp_T * adv_T - 0.5 * config["beta"] * (lp_T - q_T) ** 2).sum()
    raise ValueError(f"unknown loss_fn {loss_fn!r}")
