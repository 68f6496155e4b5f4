"""Two-phase sampling on real vLLM: a sequence that exhausts the thinking budget gets the forced prefill
(mask 0, logprob 0) and a final phase whose logprobs are exact given the whole context."""

import pytest
import torch

from inference.two_phase import sample_two_phase
from inference.types import SamplingParams
from trainer.datums import rollout_datum
from trainer.learner import LoRALearner, LoraSpec

pytestmark = pytest.mark.vllm


def test_prefill_is_masked_and_final_phase_is_exact(vllm_sampler, tiny_model_path):
    tok = vllm_sampler.get_tokenizer()
    prompt = list(tok.apply_chat_template([{"role": "user", "content": "Write 12 digits."}],
                                          add_generation_prompt=True, tokenize=True, return_dict=False))
    prefill = tok.encode(" out of thinking tokens:")
    groups = sample_two_phase(vllm_sampler, [prompt], 3, SamplingParams(max_tokens=99, seed=2), version=None,
                              thinking_budget=5, final_budget=4, prefill_tokens=prefill)
    learner = LoRALearner(tiny_model_path, LoraSpec(rank=8))  # B = 0: exactly the base model sampled above
    for seq in groups[0]:
        if seq.mask is None:  # stopped within the budget: single phase
            assert len(seq.tokens) <= 5
            continue
        n_think = seq.extra["thinking_tokens"]
        assert n_think == 5 and seq.tokens[5:5 + len(prefill)] == prefill
        assert seq.mask == [1] * 5 + [0] * len(prefill) + [1] * (len(seq.tokens) - 5 - len(prefill))
        assert seq.logprobs[5:5 + len(prefill)] == [0.0] * len(prefill)
        datum = rollout_datum(prompt, seq.tokens, seq.logprobs, 2.0, seq.mask)
        adv = datum.loss_fn_inputs["advantages"].to_torch()[len(prompt) - 1:]
        assert adv.tolist() == [2.0 * m for m in seq.mask]
        ours = learner.forward_backward([datum], "importance_sampling", forward_only=True)
        ours_lp = ours["loss_fn_outputs"][0]["logprobs"][len(prompt) - 1:]
        chosen = torch.tensor(seq.mask, dtype=torch.bool)
        assert (ours_lp[chosen] - torch.tensor(seq.logprobs)[chosen]).abs().max() < 1e-4
    assert any(seq.mask is not None for seq in groups[0])


def test_bad_budgets_are_refused(vllm_sampler):
    with pytest.raises(ValueError, match="thinking_budget and final_budget must be >= 1"):
        sample_two_phase(vllm_sampler, [[1, 2]], 1, SamplingParams(), thinking_budget=0, final_budget=4,
                         prefill_tokens=[1])
