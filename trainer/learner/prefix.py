"""Shared-prefix passes: datums that start with the same tokens (a GRPO group's rollouts share their prompt)
run that prefix through the model once, and only their own suffixes separately.

A pass = groups of datums, each group with a shared prefix length S. Two model calls per pass: the prefixes,
left-padded into one row per group, with a KV cache; the cache is repeated for each group's members, and the
right-padded suffixes run on top of it with position ids that continue each prefix. Causal attention makes
this exact (the prefix never attends to a suffix), so logprobs and gradients equal those of whole sequences up
to float rounding; autograd sums the gradient that reaches a shared prefix from all of its members.

The prefix of a datum is the first S tokens of its model_input. The logprob rows of positions 0..S-2 are shared
too when the members' targets agree there; position S-1 predicts the first suffix token, so it is the datum's.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

MIN_SHARED_TOKENS = 16  # below this a shared prefix saves less than the second model call costs


@dataclass
class PrefixGroup:
    members: list[int]  # datum indices
    shared: int  # S: the first S model_input tokens are the same in every member (1 <= S < every length)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def find_groups(tokens: Sequence[Sequence[int]], min_shared: int = MIN_SHARED_TOKENS) -> list[PrefixGroup]:
    """Datums that share at least `min_shared` leading tokens; every datum is in exactly one group (a datum
    that shares nothing is a group of one, with S = its length - 1). In sorted order, neighbours with the
    longest common prefixes sit next to each other, so one scan finds the groups."""
    order = sorted(range(len(tokens)), key=lambda i: list(tokens[i]))  # lexicographic
    groups: list[PrefixGroup] = []
    for i in order:
        if groups:
            g = groups[-1]
            shared = min(_common_prefix(tokens[g.members[0]], tokens[i]), len(tokens[i]) - 1, g.shared)
            if shared >= min_shared:
                g.members.append(i)
                g.shared = shared
                continue
        groups.append(PrefixGroup([i], len(tokens[i]) - 1))
    return groups


def pass_cost(groups: Sequence[PrefixGroup], lengths: Sequence[int], kv_ratio: float = 0.0) -> float:
    """Tokens of the two calls as padded (groups x the longest prefix + members x the longest suffix), plus the
    prefix KV repeated for every member, counted as `kv_ratio` tokens per position (2 x KV width / hidden
    width: what one position of K and V holds against the one hidden state a checkpointed layer keeps)."""
    prefix = max(g.shared for g in groups)
    suffix = max(lengths[i] - g.shared for g in groups for i in g.members)
    members = sum(len(g.members) for g in groups)
    return len(groups) * prefix + members * suffix + kv_ratio * members * prefix


def plan_shared(groups: Sequence[PrefixGroup], lengths: Sequence[int], budget: int,
                kv_ratio: float = 0.0) -> list[list[PrefixGroup]]:
    """Passes that cost at most `budget` (pass_cost): a group too big for one pass is split into member
    chunks (each chunk runs the prefix again); groups fill passes first-fit, biggest first."""
    cost = lambda gs: pass_cost(gs, lengths, kv_ratio)  # noqa: E731
    pieces: list[PrefixGroup] = []
    for g in groups:
        chunk: list[int] = []
        for i in sorted(g.members, key=lambda j: -lengths[j]):
            if chunk and cost([PrefixGroup(chunk + [i], g.shared)]) > budget:
                pieces.append(PrefixGroup(chunk, g.shared))
                chunk = []
            chunk.append(i)
        pieces.append(PrefixGroup(chunk, g.shared))
    passes: list[list[PrefixGroup]] = []
    for piece in sorted(pieces, key=lambda g: -cost([g])):
        fit = next((p for p in passes if cost(p + [piece]) <= budget), None)
        if fit is None:
            passes.append([piece])
        else:
            fit.append(piece)
    return passes


def _prefix_cache():
    """A KV cache for the two calls of a shared-prefix pass that gives the same answers when gradient
    checkpointing replays a layer in backward: the prefix call stores each layer's K/V once (a replay does
    not store it again), `share(index)` gives a second cache with it repeated for the members, and the
    suffix call reads that one without storing its own K/V. So the layers may keep the cache under
    checkpointing (_can_checkpoint_with_cache)."""
    from transformers import DynamicCache

    class PrefixCache(DynamicCache):
        reading = False
        written: set

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            if self.reading:
                layer = self.layers[layer_idx]
                return torch.cat([layer.keys, key_states], -2), torch.cat([layer.values, value_states], -2)
            if layer_idx in self.written:  # checkpointing replays the prefix layer in backward
                return key_states, value_states
            self.written.add(layer_idx)
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)

        def share(self, index: torch.Tensor) -> "PrefixCache":
            """The suffix call's cache: the prefix rows repeated for the members, read-only. A new object,
            so that a replay of the prefix call in backward still finds this one writing (and storing
            nothing twice)."""
            reader = copy.copy(self)
            reader.reading = True
            reader.layers = [copy.copy(layer) for layer in self.layers]
            for layer in reader.layers:  # index_select: its backward (index_add) sums the members' gradients
                layer.keys = layer.keys.index_select(0, index)  # in a fixed order; advanced indexing's
                layer.values = layer.values.index_select(0, index)  # parallel atomic adds on CPU do not
            return reader

    cache = PrefixCache()
    cache.written = set()
    return cache


def allow_cache_under_checkpointing(model: torch.nn.Module) -> None:
    """HF's checkpointed layers drop a KV cache in training, because replaying a writer would store its K/V
    twice; the prefix cache above is replay-safe, and plain passes use no cache at all."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module._can_checkpoint_with_cache = True


def shard_groups(groups: Sequence[PrefixGroup], lengths: Sequence[int], world_size: int) -> list[list[int]]:
    """Datum indices per rank that keep prefix groups whole where the balance allows: a group bigger than a
    rank's fair share of tokens is split round-robin into that many pieces (each piece runs the prefix on its
    rank), then pieces go biggest first onto the least loaded rank. Every rank computes the same split."""
    fair = sum(lengths) / world_size
    pieces = []
    for g in groups:
        members = sorted(g.members)
        n = min(len(members), max(1, math.ceil(sum(lengths[i] for i in members) / fair)))
        pieces += [members[c::n] for c in range(n)]
    shards: list[list[int]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for piece in sorted(pieces, key=lambda p: (-sum(lengths[i] for i in p), p[0])):
        r = min(range(world_size), key=lambda k: (load[k], k))
        shards[r] += piece
        load[r] += sum(lengths[i] for i in piece)
    return [sorted(s) for s in shards]


def shared_prefix_hidden(call_model: Callable[..., torch.Tensor], tokens: Sequence[Sequence[int]],
                         groups: Sequence[PrefixGroup], device
                         ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The decoder's last hidden states of one pass as (hidden_R_H, prefix_rows, own_rows): all rows of both
    calls in one (R, H) tensor; per group, the row indices of its prefix positions 0..S-2; per member (in
    group order), the row indices of its own positions S-1..N-1. A member's (N, H) hidden states are
    hidden_R_H[cat(prefix_rows[its group], own_rows[it])].
    """
    P = len(groups)
    width = max(g.shared for g in groups)
    ids_PL = torch.zeros(P, width, dtype=torch.long)
    mask_PL = torch.zeros(P, width, dtype=torch.long)
    for p, g in enumerate(groups):
        ids_PL[p, width - g.shared:] = torch.tensor(list(tokens[g.members[0]][:g.shared]))
        mask_PL[p, width - g.shared:] = 1
    positions_PL = (mask_PL.cumsum(-1) - 1).clamp(min=0)
    cache = _prefix_cache()
    hidden_PLH = call_model(input_ids=ids_PL.to(device), attention_mask=mask_PL.to(device),
                            position_ids=positions_PL.to(device), past_key_values=cache)

    members = [(p, i) for p, g in enumerate(groups) for i in g.members]
    repeat_B = torch.tensor([p for p, _ in members], device=device)
    cache = cache.share(repeat_B)
    suffixes = [list(tokens[i][groups[p].shared:]) for p, i in members]
    swidth = max(len(s) for s in suffixes)
    ids_BW = torch.zeros(len(members), swidth, dtype=torch.long)
    mask_BW = torch.zeros(len(members), swidth, dtype=torch.long)
    for b, s in enumerate(suffixes):
        ids_BW[b, :len(s)] = torch.tensor(s)
        mask_BW[b, :len(s)] = 1
    start_B1 = torch.tensor([[groups[p].shared] for p, _ in members])
    hidden_BWH = call_model(input_ids=ids_BW.to(device),
                            attention_mask=torch.cat([mask_PL[repeat_B.cpu()], mask_BW], 1).to(device),
                            position_ids=(start_B1 + torch.arange(swidth)[None]).to(device),
                            past_key_values=cache)
    H = hidden_PLH.shape[-1]
    hidden_R_H = torch.cat([hidden_PLH.reshape(-1, H), hidden_BWH.reshape(-1, H)])
    own = []
    for b, (p, i) in enumerate(members):  # position S-1 (the prefix's last row), then the suffix rows
        n_suffix = len(tokens[i]) - groups[p].shared
        own.append(torch.cat([torch.tensor([p * width + width - 1]),
                              P * width + b * swidth + torch.arange(n_suffix)]))
    prefix_rows = [p * width + width - g.shared + torch.arange(g.shared - 1) for p, g in enumerate(groups)]
    return hidden_R_H, prefix_rows, own


def kv_ratio(config) -> float:
    """2 x the KV width over the hidden width, from a transformers config (see pass_cost)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * getattr(config, "num_key_value_heads", heads) * head_dim / config.hidden_size
