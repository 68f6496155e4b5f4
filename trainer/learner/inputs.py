"""Datums -> validated tensors, and the plan of which datums share a forward pass.

Validation raises one ValueError per problem that names the datum and the field, before any compute, so a
bad request never leaves half-accumulated gradients behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from trainer.losses import LOSS_INPUTS


@dataclass
class PreparedDatum:
    tokens: list[int]  # model_input as ints, length N
    inputs: dict[str, torch.Tensor]  # target_tokens (N,) or (N, K) for cross_entropy, plus the loss's fields


def model_input_ints(datum: Any) -> list[int]:
    model_input = datum.model_input
    return list(model_input.to_ints()) if hasattr(model_input, "to_ints") else list(model_input)


def as_tensor(value: Any, dtype: torch.dtype) -> torch.Tensor:
    """TensorData (reshaped by its shape), a tensor, or a plain list -> a tensor of `dtype`."""
    if hasattr(value, "to_torch"):
        value = value.to_torch()
    elif hasattr(value, "data") and not isinstance(value, torch.Tensor):
        value = value.data
    return torch.as_tensor(value, dtype=dtype)


def fields_for(loss_fn: str) -> tuple[str, ...]:
    return ("target_tokens",) + LOSS_INPUTS[loss_fn]


def prepare_data(data: Sequence[Any], fields: tuple[str, ...], vocab_size: int, user: str,
                 allow_top_k: bool = False) -> list[PreparedDatum]:
    """Check that every datum has `fields` (which `user` needs) with the right shapes and token ids.

    (N, K) target_tokens are accepted only with allow_top_k (cross_entropy's top-K distillation form).
    """
    if len(data) == 0:
        raise ValueError("no datums: pass at least one Datum")
    prepared = []
    for i, datum in enumerate(data):
        try:
            tokens = model_input_ints(datum)
        except Exception as exc:  # a chunk type we cannot turn into token ids (images, ...)
            raise ValueError(f"datum {i}: model_input is not a list of token ids ({exc})") from None
        if not tokens:
            raise ValueError(f"datum {i}: model_input is empty")
        loss_fn_inputs = getattr(datum, "loss_fn_inputs", None) or {}
        inputs: dict[str, torch.Tensor] = {}
        for key in fields:
            if key not in loss_fn_inputs:
                raise ValueError(f"datum {i}: loss_fn_inputs lacks {key!r}, which {user} needs")
            dtype = torch.long if key == "target_tokens" else torch.float32
            try:
                inputs[key] = as_tensor(loss_fn_inputs[key], dtype)
            except Exception as exc:
                raise ValueError(f"datum {i}: loss_fn_inputs[{key!r}] is not numeric ({exc})") from None
        _check_shapes(i, len(tokens), inputs, allow_top_k)
        for key, ids in (("model_input", torch.tensor(tokens)), ("target_tokens", inputs["target_tokens"])):
            bad = ids[(ids < 0) | (ids >= vocab_size)]
            if bad.numel():
                raise ValueError(f"datum {i}: {key} has token id {int(bad[0])} outside the vocabulary "
                                 f"[0, {vocab_size})")
        prepared.append(PreparedDatum(tokens, inputs))
    return prepared


def _check_shapes(i: int, n: int, inputs: dict[str, torch.Tensor], allow_top_k: bool) -> None:
    target_shape = tuple(inputs["target_tokens"].shape)
    top_k = allow_top_k and len(target_shape) == 2 and target_shape[0] == n and target_shape[1] >= 1
    expected = target_shape if top_k else (n,)
    for key, t in inputs.items():
        if tuple(t.shape) != expected:
            like = "target_tokens" if top_k else "model_input"
            raise ValueError(f"datum {i}: loss_fn_inputs[{key!r}] has shape {tuple(t.shape)}, "
                             f"expected {expected} like {like}")


def plan_micro_batches(lengths: Sequence[int], budget: int, packed: bool) -> list[list[int]]:
    """Datum indices grouped so that each forward pass holds at most `budget` tokens.

    Packed: the sum of lengths counts (one row, no padding); first-fit decreasing fills the rows. Padded: rows
    are as wide as the longest, so consecutive groups in longest-first order keep the padding small. A datum
    longer than the budget gets a pass of its own.
    """
    order = sorted(range(len(lengths)), key=lambda j: -lengths[j])
    if packed:
        groups: list[list[int]] = []
        room: list[int] = []
        for i in order:
            fit = next((g for g, r in enumerate(room) if lengths[i] <= r), None)
            if fit is None:
                groups.append([i])
                room.append(budget - lengths[i])
            else:
                groups[fit].append(i)
                room[fit] -= lengths[i]
        return groups
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and lengths[current[0]] * (len(current) + 1) > budget:
            batches.append(current)
            current = []
        current.append(i)
    return batches + ([current] if current else [])


def shard_by_tokens(lengths: Sequence[int], world_size: int) -> list[list[int]]:
    """Split datum indices over ranks with balanced token counts; every rank computes the same split.

    Longest first onto the least loaded rank (ties -> lowest rank), so the plan is deterministic.
    """
    shards: list[list[int]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        r = min(range(world_size), key=lambda k: (load[k], k))
        shards[r].append(i)
        load[r] += lengths[i]
    return [sorted(s) for s in shards]
