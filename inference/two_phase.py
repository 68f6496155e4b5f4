"""Two-phase sampling for long generations (TTT-Discover's TwoPhaseTokenCompleter): sample up to a thinking
budget; a sequence that hits it gets a forced prefill ("... I am out of thinking tokens ...") and a second,
final-answer phase. The prefill is not the policy's choice: its tokens carry mask 0 and logprob 0, so they
contribute nothing to the importance-sampling loss.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from inference.types import SampledSequence, SamplingParams

DEFAULT_PREFILL = "... okay, I am out of thinking tokens. I need to send my final message now."


def sample_two_phase(sampler, prompts_P: Sequence[Sequence[int]], num_samples: int, params: SamplingParams,
                     *, thinking_budget: int, final_budget: int, prefill_tokens: Sequence[int],
                     seeds_P: Sequence[int | None] | None = None, version="current",
                     ) -> list[list[SampledSequence]]:
    if thinking_budget < 1 or final_budget < 1:
        raise ValueError(f"thinking_budget and final_budget must be >= 1, got {thinking_budget}, {final_budget}")
    groups = sampler.sample(prompts_P, num_samples, replace(params, max_tokens=thinking_budget), seeds_P=seeds_P,
                            version=version)
    cut = [(p, k) for p, group in enumerate(groups) for k, seq in enumerate(group) if seq.stop_reason == "length"]
    if not cut:
        return groups
    continuations = [list(prompts_P[p]) + groups[p][k].tokens + list(prefill_tokens) for p, k in cut]
    base_seed = params.seed if params.seed is not None else 0
    finals = sampler.sample(continuations, 1, replace(params, max_tokens=final_budget),
                            seeds_P=[base_seed + 7919 * (i + 1) for i in range(len(cut))], version=version)
    tokenizer = sampler.get_tokenizer()
    for (p, k), (final,) in zip(cut, finals):
        first = groups[p][k]
        tokens = first.tokens + list(prefill_tokens) + final.tokens
        groups[p][k] = SampledSequence(
            tokens=tokens, logprobs=first.logprobs + [0.0] * len(prefill_tokens) + final.logprobs,
            stop_reason=final.stop_reason, adapter_version=first.adapter_version,
            text=tokenizer.decode(tokens, skip_special_tokens=True),
            mask=[1] * len(first.tokens) + [0] * len(prefill_tokens) + [1] * len(final.tokens),
            extra={"phases": 2, "thinking_tokens": len(first.tokens)})
    return groups
