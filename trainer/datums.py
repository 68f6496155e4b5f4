"""Rollouts -> Tinker Datums (the learner's and the Tinker service's input format).

Position i of model_input predicts token i+1: model_input = seq[:-1], target_tokens = seq[1:]. Prompt
positions carry advantage 0 and sampler logprob 0, so with sum reduction they contribute nothing.
"""

from __future__ import annotations

from typing import Sequence

import tinker


def rollout_datum(prompt_tokens: Sequence[int], completion_tokens: Sequence[int],
                  sampler_logprobs: Sequence[float], advantage: float | Sequence[float],
                  mask: Sequence[int] | None = None) -> tinker.Datum:
    """`advantage`: one value for the whole completion, or one per completion token (KL-shaped).
    `mask` marks completion tokens the policy chose (1) vs forced ones (0: advantage 0, logprob 0)."""
    if len(completion_tokens) != len(sampler_logprobs):
        raise ValueError(f"{len(completion_tokens)} completion tokens but {len(sampler_logprobs)} logprobs")
    mask = [1] * len(completion_tokens) if mask is None else list(mask)
    if len(mask) != len(completion_tokens):
        raise ValueError(f"{len(completion_tokens)} completion tokens but a mask of {len(mask)}")
    per_token = [float(advantage)] * len(mask) if isinstance(advantage, (int, float)) else list(advantage)
    if len(per_token) != len(mask):
        raise ValueError(f"{len(completion_tokens)} completion tokens but {len(per_token)} advantages")
    seq = list(prompt_tokens) + list(completion_tokens)
    n_prompt_targets = len(prompt_tokens) - 1  # targets that are still prompt tokens
    logprobs_T = [0.0] * n_prompt_targets + [float(lp) * m for lp, m in zip(sampler_logprobs, mask)]
    advantages_T = [0.0] * n_prompt_targets + [float(a) * m for a, m in zip(per_token, mask)]
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(seq[:-1]),
        loss_fn_inputs={
            "target_tokens": tinker.TensorData(data=seq[1:], dtype="int64", shape=[len(seq) - 1]),
            "logprobs": tinker.TensorData(data=logprobs_T, dtype="float32", shape=[len(seq) - 1]),
            "advantages": tinker.TensorData(data=advantages_T, dtype="float32", shape=[len(seq) - 1]),
        },
    )


def completion_logprobs(learner_logprobs_T, n_prompt_tokens: int) -> list[float]:
    """The learner's logprobs of the completion tokens only, from a datum's per-target logprobs."""
    return [float(x) for x in learner_logprobs_T[n_prompt_tokens - 1:]]


def imitation_datum(prompt_tokens: Sequence[int], completion_tokens: Sequence[int],
                    mask: Sequence[int] | None = None) -> tinker.Datum:
    """A cross_entropy datum that imitates the completion's chosen tokens (expert iteration)."""
    mask = [1] * len(completion_tokens) if mask is None else list(mask)
    seq = list(prompt_tokens) + list(completion_tokens)
    weights_T = [0.0] * (len(prompt_tokens) - 1) + [float(m) for m in mask]
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(seq[:-1]),
        loss_fn_inputs={
            "target_tokens": tinker.TensorData(data=seq[1:], dtype="int64", shape=[len(seq) - 1]),
            "weights": tinker.TensorData(data=weights_T, dtype="float32", shape=[len(seq) - 1]),
        },
    )
