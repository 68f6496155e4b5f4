"""The client-side half of Tinker's forward_backward_custom: run the user's loss on detached logprobs and turn
its gradient into cross_entropy weights.

The learner then runs cross_entropy with weights = -dL/dlogprobs: its gradient w.r.t. the model equals the
custom loss's by the chain rule, and its value (the "surrogate loss") is -sum(weights * logprobs).
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def run_custom_loss(loss_fn: Callable, data: list[Any], logprobs: list[torch.Tensor]
                    ) -> tuple[list[torch.Tensor], float, dict[str, float]]:
    """(weights per datum, custom loss value, loss_fn's metrics); one clear error for each way it can fail."""
    leaves = [lp.detach().clone().requires_grad_(True) for lp in logprobs]
    try:
        result = loss_fn(data, leaves)
    except Exception as exc:
        raise ValueError(f"forward_backward_custom: loss_fn raised {type(exc).__name__}: {exc}") from exc
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ValueError(f"forward_backward_custom: loss_fn must return (loss tensor, metrics dict), "
                         f"got {type(result).__name__}")
    loss, metrics = result
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"forward_backward_custom: loss_fn's loss must be a one-element tensor, got {shape}")
    if not loss.requires_grad:
        raise ValueError("forward_backward_custom: loss_fn's loss does not depend on the logprobs it was given")
    if not isinstance(metrics, dict):
        raise ValueError(f"forward_backward_custom: loss_fn's metrics must be a dict, got {type(metrics).__name__}")
    for key in metrics:
        if not isinstance(key, str) or ":" not in key:  # Tinker splits every metric key on ':'
            raise ValueError(f"forward_backward_custom: metric {key!r} must be named 'name:reduction', "
                             f"e.g. 'kl:mean'")
    loss.sum().backward()
    weights = []
    for i, leaf in enumerate(leaves):
        if leaf.grad is None:
            raise ValueError(f"datum {i}: loss_fn's loss has no gradient with respect to this datum's logprobs")
        weights.append(-leaf.grad)
    return weights, float(loss.detach().sum()), {k: float(v) for k, v in metrics.items()}
