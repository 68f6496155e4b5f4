"""Sampling rollout groups through a Tinker-shaped SamplingClient (the SDK's or ours), with TTT-Discover's
two-phase budget: a sequence that hits the thinking budget gets the forced prefill and a final-answer phase.
The prefill is not the policy's choice: mask 0, logprob 0.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

from tinker import types

from envs.base import VerifyResult, failed
from inference.chat_formats import final_answer


@dataclass
class Rollout:
    group: int
    index: int  # position in the step's flat batch (group * K + k)
    parent_id: int  # the buffer node the prompt was built from
    prompt_tokens: list[int]
    tokens: list[int]
    logprobs: list[float]
    mask: list[int]
    text: str
    stop_reason: str
    result: Any = None  # envs.base.VerifyResult once verified
    extra: dict = field(default_factory=dict)
    version: int = 0  # the adapter version that sampled it (staleness = trained-at version - this)


def render_prompt(tokenizer, text: str, chat_template_kwargs: dict | None = None, answer_prefix: str = "") -> list[int]:
    """The chat prompt for one user message, ending with the assistant's turn and, if the task has one, the
    start of its answer (`Env.answer_prefix`, e.g. "[" for a list: the model continues from there)."""
    tokens = list(tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                tokenize=True, return_dict=False, **(chat_template_kwargs or {})))
    return tokens + (tokenizer.encode(answer_prefix, add_special_tokens=False) if answer_prefix else [])


def state_prompt(tokenizer, env, state, chat_template_kwargs: dict | None = None) -> list[int]:
    """The prompt tokens for a state of `env` (its improvement prompt and answer prefix)."""
    return render_prompt(tokenizer, env.prompt(state), chat_template_kwargs, env.answer_prefix)


MAX_GROUPS, MAX_GROUP_SIZE = 512, 256
SEED_MODULUS = 2**31 - 2**21  # a multiple of MAX_GROUP_SIZE; + k and the final phase's offsets stay in int32


def group_seed(seed: int, step: int, group: int) -> int:
    """Per-group sampling seeds fixed by (run seed, step, group), so a resumed step samples the same. Sequence
    k of a group samples with seed + k (vLLM's rule for n > 1, which our HF sampler follows), so each group
    gets its own block of MAX_GROUP_SIZE seeds: with consecutive seeds, group g's sequence 1 would be group
    g+1's sequence 0, the same sample whenever the two groups share a parent. Blocks repeat only after
    SEED_MODULUS / (MAX_GROUPS * MAX_GROUP_SIZE) = 16,376 steps."""
    if not 0 <= group < MAX_GROUPS:
        raise ValueError(f"at most {MAX_GROUPS} groups per step are supported, got group {group}")
    offset = int.from_bytes(hashlib.blake2b(str(seed).encode(), digest_size=8).digest(), "little")
    return (offset + (step * MAX_GROUPS + group) * MAX_GROUP_SIZE) % SEED_MODULUS


def sample_groups(client, prompts_G: Sequence[list[int]], group_size: int, params: types.SamplingParams,
                  seeds_G: Sequence[int], tokenizer, *, thinking_budget: int = 0, final_budget: int = 0,
                  prefill_tokens: Sequence[int] = (), progress: Any = None) -> list[list[dict]]:
    """-> per group, K dicts {tokens, logprobs, mask, text, stop_reason}. All groups are in flight at once;
    the final phases start once every first phase is back (pipeline=sync: the paper's order)."""
    first = _first_phase(params, thinking_budget)
    futures = [client.sample(types.ModelInput.from_ints(list(p)), group_size, first.model_copy(update={"seed": s}))
               for p, s in zip(prompts_G, seeds_G)]
    groups = []
    for future in futures:
        groups.append(_sequences(future.result()))
        if progress is not None:
            progress.update(1)
    if thinking_budget > 0:
        cut = [(g, k) for g, group in enumerate(groups) for k, seq in enumerate(group)
               if seq["stop_reason"] == "length"]
        finals = [_final_request(client, prompts_G[g], groups[g][k], k, params, seeds_G[g], final_budget,
                                 prefill_tokens) for g, k in cut]
        for (g, k), future in zip(cut, finals):
            _join_final(groups[g][k], future.result().sequences[0], prefill_tokens)
    for group in groups:
        _decode(group, tokenizer)
    return groups


def request_sequence(client, prompt: list[int], k: int, params: types.SamplingParams, seed: int, *,
                     thinking_budget: int = 0):
    """The first-phase request of sequence k of a group seeded `seed`, sent now (a future). A single request
    seeded seed + k samples what the group request's k-th sequence would (vLLM's rule; our HF sampler's too),
    so the same tokens as sample_groups on our backends; Tinker's cloud does not promise that rule."""
    first = _first_phase(params, thinking_budget)
    return client.sample(types.ModelInput.from_ints(list(prompt)), 1, first.model_copy(update={"seed": seed + k}))


def finish_sequence(client, requested, prompt: list[int], k: int, params: types.SamplingParams, seed: int,
                    tokenizer, *, thinking_budget: int = 0, final_budget: int = 0,
                    prefill_tokens: Sequence[int] = ()) -> dict:
    """Sequence k once its first-phase request (`requested`) is back: the final-answer phase if it hit the
    thinking budget, then the decoded answer (pipeline=stream/async: it goes to the verifier the moment it
    ends, not when its group's longest sequence does)."""
    seq = _sequences(requested.result())[0]
    if thinking_budget > 0 and seq["stop_reason"] == "length":
        final = _final_request(client, prompt, seq, k, params, seed, final_budget, prefill_tokens)
        _join_final(seq, final.result().sequences[0], prefill_tokens)
    _decode([seq], tokenizer)
    return seq


def _first_phase(params: types.SamplingParams, thinking_budget: int) -> types.SamplingParams:
    """Two-phase sampling's first request stops at the thinking budget."""
    return params.model_copy(update={"max_tokens": thinking_budget}) if thinking_budget > 0 else params


def _sequences(response) -> list[dict]:
    return [{"tokens": list(seq.tokens), "logprobs": [float(x) for x in seq.logprobs],
             "mask": [1] * len(seq.tokens), "stop_reason": seq.stop_reason} for seq in response.sequences]


def _final_request(client, prompt, seq: dict, k: int, params, seed: int, final_budget: int, prefill):
    """The final-answer phase of a sequence that hit the thinking budget: after the forced prefill."""
    return client.sample(types.ModelInput.from_ints(list(prompt) + seq["tokens"] + list(prefill)), 1,
                         params.model_copy(update={"max_tokens": final_budget, "seed": seed + 7919 * (k + 1)}))


def _join_final(seq: dict, final, prefill) -> None:
    prefill = list(prefill)
    thinking = len(seq["tokens"])
    seq["tokens"] = seq["tokens"] + prefill + list(final.tokens)
    seq["logprobs"] = seq["logprobs"] + [0.0] * len(prefill) + [float(x) for x in final.logprobs]
    seq["mask"] = [1] * thinking + [0] * len(prefill) + [1] * len(final.tokens)
    seq["stop_reason"] = final.stop_reason
    seq["extra"] = {"phases": 2, "thinking_tokens": thinking}


def _decode(group: list[dict], tokenizer) -> None:
    for seq in group:
        answer = final_answer(tokenizer.decode(seq["tokens"], skip_special_tokens=False),
                              tokenizer.decode(seq["tokens"], skip_special_tokens=True))
        seq["text"] = answer.text if answer.text is not None else ""
        seq["extra"] = {**seq.get("extra", {}), "answer_format": answer.format,
                        "reasoning_chars": len(answer.reasoning), "no_answer": answer.problem}


def unverifiable(r: Rollout, needs_complete_answer: bool) -> VerifyResult | None:
    """The failure record of a rollout that has no answer to verify (never sent to the sandbox), or None."""
    if r.extra.get("no_answer"):
        return failed("format_error", r.extra["no_answer"])
    if needs_complete_answer and r.stop_reason == "length":
        return failed("truncated", f"the answer hit max_tokens ({len(r.tokens)} tokens) before it ended: raise "
                                   "max_tokens or ask for a shorter answer")
    return None
