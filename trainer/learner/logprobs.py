"""Per-token target logprobs from one forward pass over several datums, packed or padded.

Packed (padding-free): the datums are concatenated into one row and position_ids restart at 0 for each.
transformers builds the attention mask from position_ids when attention_mask is None: with flash-attn on GPU
it becomes varlen attention, with sdpa/eager (CPU) a block-diagonal causal mask. Either way no token attends
across datums and no compute is spent on padding tokens in the MLPs and projections (on CPU the attention
itself still scores the whole row under the mask). Padded: right-padded rows with an attention mask, for
models whose masks do not come from position_ids.
"""

from __future__ import annotations

from typing import Callable

import torch

from trainer.learner.inputs import PreparedDatum
from trainer.learner.prefix import shared_prefix_hidden

# Model types whose transformers implementation derives packed-sequence masks from position_ids.
PACKABLE_MODEL_TYPES = {"qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "llama", "mistral"}
# Model types whose logits are exactly lm_head(decoder's last_hidden_state) (no soft-capping or scaling after
# lm_head) and whose forward takes logits_to_keep: for them no micro-batch's full (T, V) logits are ever built.
LM_HEAD_MODEL_TYPES = {"qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "llama", "mistral"}
CHUNK_ROWS = 1024  # rows of vocab-sized fp32 temporaries alive at a time


class TargetLogprobs(torch.autograd.Function):
    """log_softmax(logits)[target] without keeping a float32 (T, V) tensor alive for backward.

    Autograd through log_softmax + gather saves the fp32 log-softmax output; with a 150k vocabulary that
    dwarfs the model's activations. Here only the logits (model dtype) are saved and the log-softmax is
    recomputed in row chunks in backward, with the same kernels, so values and gradients equal the plain
    version's. Targets are (T, K): K = 1 normally, K > 1 for top-K cross-entropy.
    """

    @staticmethod
    def forward(ctx, logits_T_V: torch.Tensor, targets_T_K: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(logits_T_V, targets_T_K)
        return torch.cat([torch.log_softmax(chunk.float(), dim=-1).gather(-1, t_K)
                          for chunk, t_K in zip(logits_T_V.split(CHUNK_ROWS), targets_T_K.split(CHUNK_ROWS))])

    @staticmethod
    def backward(ctx, grad_T_K: torch.Tensor):
        logits_T_V, targets_T_K = ctx.saved_tensors
        grad_logits = torch.empty_like(logits_T_V)
        for start in range(0, logits_T_V.shape[0], CHUNK_ROWS):
            rows = slice(start, start + CHUNK_ROWS)
            logp_V = torch.log_softmax(logits_T_V[rows].float(), dim=-1)
            # the exact ops autograd would run for gather + log_softmax, one chunk at a time
            onehot_V = torch.zeros_like(logp_V).scatter_add_(-1, targets_T_K[rows], grad_T_K[rows])
            g_V = torch._log_softmax_backward_data(onehot_V, logp_V, -1, torch.float32)
            grad_logits[rows] = g_V.to(grad_logits.dtype)
        return grad_logits, None


def target_logprobs(logits_T_V: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Logprobs shaped like `targets`: (T,) -> (T,), (T, K) -> (T, K)."""
    targets_T_K = targets if targets.dim() == 2 else targets[:, None]
    lp_T_K = TargetLogprobs.apply(logits_T_V, targets_T_K)
    return lp_T_K if targets.dim() == 2 else lp_T_K[:, 0]


def chunked_target_logprobs(lm_head: torch.nn.Module, hidden_T_H: torch.Tensor, targets_T_K: torch.Tensor
                            ) -> torch.Tensor:
    """log_softmax(lm_head(hidden))[target] in row chunks: vocab-sized tensors exist for CHUNK_ROWS rows at a time.

    The (T, V) logits of a long micro-batch are never built, in forward or in backward: with gradients on, each
    chunk runs under non-reentrant activation checkpointing, which keeps only its (C, H) input and recomputes
    its logits in backward (the lm_head matmul runs once more; the frozen lm_head needs no weight gradient,
    and a LoRA lm_head gets its gradient through the recomputation). Same ops per row as lm_head +
    log_softmax + gather on the whole batch.
    """
    def chunk_logprobs(h_C_H: torch.Tensor, t_C_K: torch.Tensor) -> torch.Tensor:
        logits_C_V = lm_head(h_C_H)  # bf16 / fp16 -> fp32 like TargetLogprobs; a float64 model stays float64
        return torch.log_softmax(logits_C_V.to(torch.promote_types(logits_C_V.dtype, torch.float32)), dim=-1
                                 ).gather(-1, t_C_K)

    if not torch.is_grad_enabled():
        return torch.cat([chunk_logprobs(h, t) for h, t in zip(hidden_T_H.split(CHUNK_ROWS),
                                                               targets_T_K.split(CHUNK_ROWS))])
    from torch.utils.checkpoint import checkpoint

    return torch.cat([checkpoint(chunk_logprobs, h, t, use_reentrant=False, preserve_rng_state=False)
                      for h, t in zip(hidden_T_H.split(CHUNK_ROWS), targets_T_K.split(CHUNK_ROWS))])


def batch_logprobs(call_model: Callable[..., torch.Tensor], batch: list[PreparedDatum], packed: bool, device: str,
                   lm_head: torch.nn.Module | None = None, grad_rows: list[torch.Tensor] | None = None
                   ) -> list[torch.Tensor]:
    """One forward pass over `batch`; returns each datum's target logprobs (float32, on `device`; float64 for a
    float64 model on the chunked path).

    `call_model(**inputs)` returns the (B, W, V) logits, or with `lm_head` (models whose logits are exactly
    lm_head(last hidden state), LM_HEAD_MODEL_TYPES) the (B, W, H) last hidden states that lm_head reads; then
    the logprobs come from chunked_target_logprobs over real tokens only, and memory for the vocabulary is
    O(CHUNK_ROWS x V) instead of O(T x V). Without lm_head the micro-batch's full logits are built and
    TargetLogprobs reads them.

    `grad_rows`: per datum, (N,) bool, the tokens whose loss can have a gradient (losses.rows_with_gradient).
    With a chunked lm_head the other tokens' logprobs are computed without autograd: in RL datums most tokens
    are the prompt's (advantage 0), and lm_head + log-softmax is the biggest part of a small model's step.
    """
    lengths = [len(d.tokens) for d in batch]
    if packed:
        ids = torch.tensor([t for d in batch for t in d.tokens], dtype=torch.long)[None]
        positions = torch.cat([torch.arange(n) for n in lengths])[None]
        inputs = {"input_ids": ids.to(device), "position_ids": positions.to(device)}
        width = sum(lengths)
    else:
        width = max(lengths)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for b, d in enumerate(batch):
            ids[b, : lengths[b]] = torch.tensor(d.tokens)
            mask[b, : lengths[b]] = 1
        inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if lm_head is not None:
        hidden = call_model(**inputs)
        rows = hidden.reshape(-1, hidden.shape[-1])  # (T, H)
        if not packed:  # drop padding rows: lm_head and log-softmax run on real tokens only
            rows = rows[torch.cat([torch.arange(n) + b * width for b, n in enumerate(lengths)]).to(device)]
        starts = torch.tensor([0] + lengths[:-1]).cumsum(0).tolist()
    else:
        logits = call_model(**inputs)
        rows = logits.reshape(-1, logits.shape[-1])  # (T, V), a view: no full-size zero gradient for [0]
        # packed: datums follow each other; padded: padding rows are scored too, then dropped
        starts = (torch.tensor([0] + lengths[:-1]).cumsum(0).tolist() if packed
                  else [b * width for b in range(len(batch))])
    # One op over all rows: per-datum ops on slices would each make autograd add a full-size zero gradient.
    k = _top_k(batch)
    targets_T_K = torch.zeros(rows.shape[0], k, dtype=torch.long)
    for d, start, n in zip(batch, starts, lengths):
        targets_T_K[start: start + n] = _as_T_K(d.inputs["target_tokens"], k)
    targets_T_K = targets_T_K.to(device)
    if lm_head is None:
        lp_T_K = target_logprobs(rows, targets_T_K)
    else:
        lp_T_K = _lm_head_logprobs(lm_head, rows, targets_T_K, torch.cat(grad_rows) if grad_rows else None)
    return [_shaped_like(lp_T_K[start: start + n], d.inputs["target_tokens"])
            for d, start, n in zip(batch, starts, lengths)]


def _top_k(batch: list[PreparedDatum]) -> int:
    """K of the widest (N, K) target_tokens in the batch; 1 when all are (N,)."""
    return max(d.inputs["target_tokens"].shape[1] if d.inputs["target_tokens"].dim() == 2 else 1 for d in batch)


def _as_T_K(t: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) or (N, K') target_tokens as (N, k) columns, zero-filled (their logprobs are dropped again)."""
    out = torch.zeros(t.shape[0], k, dtype=torch.long)
    out[:, : (t.shape[1] if t.dim() == 2 else 1)] = t if t.dim() == 2 else t[:, None]
    return out


def _shaped_like(lp_N_K: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A datum's (N, k) logprobs shaped like its target_tokens: (N,) or (N, K')."""
    return lp_N_K[:, : t.shape[1]] if t.dim() == 2 else lp_N_K[:, 0]


def _lm_head_logprobs(lm_head: torch.nn.Module, rows_T_H: torch.Tensor, targets_T_K: torch.Tensor,
                      needs_T: torch.Tensor | None) -> torch.Tensor:
    """chunked_target_logprobs; with `needs_T` (rows whose loss can have a gradient) and autograd on, the
    other rows skip autograd."""
    if needs_T is not None and torch.is_grad_enabled():
        return _split_by_gradient(lm_head, rows_T_H, targets_T_K, needs_T.to(rows_T_H.device))
    return chunked_target_logprobs(lm_head, rows_T_H, targets_T_K)


def _split_by_gradient(lm_head: torch.nn.Module, rows_T_H: torch.Tensor, targets_T_K: torch.Tensor,
                       needs_T: torch.Tensor) -> torch.Tensor:
    """chunked_target_logprobs with autograd on the `needs_T` rows only; the same values on every row."""
    if not bool(needs_T.any()):  # keep one row in the graph so that backward() has something to run through
        needs_T = needs_T.clone()
        needs_T[0] = True
    grad_idx, free_idx = needs_T.nonzero()[:, 0], (~needs_T).nonzero()[:, 0]
    lp_grad = chunked_target_logprobs(lm_head, rows_T_H[grad_idx], targets_T_K[grad_idx])
    with torch.no_grad():
        lp_free = chunked_target_logprobs(lm_head, rows_T_H[free_idx], targets_T_K[free_idx])
    out_T_K = torch.zeros(targets_T_K.shape, dtype=lp_grad.dtype, device=lp_grad.device)
    return out_T_K.index_put((free_idx,), lp_free).index_put((grad_idx,), lp_grad)


def shared_prefix_logprobs(call_model: Callable[..., torch.Tensor], batch: list[PreparedDatum], groups: list,
                           device: str, lm_head: torch.nn.Module, grad_rows: list[torch.Tensor] | None = None
                           ) -> list[torch.Tensor]:
    """batch_logprobs for a shared-prefix pass (prefix.py): `groups` hold indices into `batch`. A
    group's prefix rows are scored once when its members' targets agree there; each member gets its logprobs
    through a gather, whose backward adds the members' gradients."""
    hidden_R_H, prefix_rows, own_rows = shared_prefix_hidden(call_model, [d.tokens for d in batch], groups, device)
    k = _top_k(batch)
    rows, targets, needs, index = [], [], [], {}  # flat scored rows; datum -> its rows in that list
    count = 0
    member = 0
    for p, g in enumerate(groups):
        s = g.shared - 1  # positions 0..S-2: same hidden state for every member
        first = batch[g.members[0]].inputs["target_tokens"][:s]
        agree = all(torch.equal(batch[i].inputs["target_tokens"][:s], first) for i in g.members)
        if agree:
            shared_at = torch.arange(count, count + s)
            rows.append(prefix_rows[p])
            targets.append(_as_T_K(first, k))
            needs.append(torch.stack([grad_rows[i][:s] for i in g.members]).any(0) if grad_rows else None)
            count += s
        for i in g.members:
            t = batch[i].inputs["target_tokens"]
            own = own_rows[member]
            member += 1
            mine = own if agree else torch.cat([prefix_rows[p], own])
            rows.append(mine)
            targets.append(_as_T_K(t[s:] if agree else t, k))
            needs.append((grad_rows[i][s:] if agree else grad_rows[i]) if grad_rows else None)
            index[i] = torch.arange(count, count + len(mine))
            if agree:
                index[i] = torch.cat([shared_at, index[i]])
            count += len(mine)
    rows_T_H = hidden_R_H.index_select(0, torch.cat(rows).to(device))  # deterministic backward (see PrefixCache)
    lp_T_K = _lm_head_logprobs(lm_head, rows_T_H, torch.cat(targets).to(device),
                               torch.cat(needs) if grad_rows else None)
    return [_shaped_like(lp_T_K.index_select(0, index[i].to(device)), d.inputs["target_tokens"])
            for i, d in enumerate(batch)]
