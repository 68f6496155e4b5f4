"""The HF sampler: merged adapters equal PEFT's own LoRA layers, the base model never changes, one seeded
generator per row (sample k of seed s draws from seed s + k, as vLLM), inverse-CDF draws follow the distribution, stop strings."""

import json

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from inference.hf_sampler import HFSampler
from inference.lora_merge import merge_plan
from inference.types import SamplingParams
from tolerances import logprob_tol

PROMPT = [1, 87, 85, 71, 40, 33]


def _adapter(model_path, out, targets, seed, **config):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules=targets, init_lora_weights=False,
                                            **config))
    peft.save_pretrained(out)
    return str(out)


def _peft_reference_logprobs(model_path, adapter_dir, tokens):
    """Independent of the sampler: a fresh base model with PEFT's unmerged LoRA layers."""
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_path), adapter_dir).eval()
    ids = torch.tensor([tokens])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    return logp.gather(-1, ids[0, 1:, None])[:, 0].numpy()


@pytest.fixture(scope="module")
def sampler(tiny_model_path):
    return HFSampler(tiny_model_path)


def test_merged_adapters_equal_peft_and_leave_the_base_model_alone(sampler, tiny_model_path, tmp_path):
    tokens = PROMPT + list(range(100, 140))
    base_before = sampler.compute_logprobs(tokens, version=None)
    first = _adapter(tiny_model_path, tmp_path / "a", ["q_proj", "v_proj", "down_proj"], seed=1)
    second = _adapter(tiny_model_path, tmp_path / "b", ["k_proj"], seed=2)  # q/v/down must go back to base
    assert merge_plan(first) is not None
    for version, path in ((1, first), (2, second)):
        sampler.load_adapter(version, path)
        served = np.array(sampler.compute_logprobs(tokens)[1:])
        reference = _peft_reference_logprobs(tiny_model_path, path, tokens)
        np.testing.assert_allclose(served, reference, atol=logprob_tol(reference), rtol=0)
        assert np.abs(served - np.array(base_before[1:])).max() > 1e-2  # the adapter does change the model
    assert sampler.compute_logprobs(tokens, version=None) == base_before


def test_unmergeable_adapters_fall_back_to_peft_layers(tiny_model_path, tmp_path):
    dora = _adapter(tiny_model_path, tmp_path / "dora", ["q_proj", "v_proj"], seed=3, use_dora=True)
    assert merge_plan(dora) is None
    tokens = PROMPT + list(range(200, 230))
    for merge in (True, False):
        sampler = HFSampler(tiny_model_path, merge_lora=merge)
        sampler.load_adapter(1, dora)
        reference = _peft_reference_logprobs(tiny_model_path, dora, tokens)
        np.testing.assert_allclose(sampler.compute_logprobs(tokens)[1:], reference, atol=logprob_tol(reference), rtol=0)


def test_merged_and_unmerged_sample_the_same_tokens(tiny_model_path, tmp_path):
    path = _adapter(tiny_model_path, tmp_path / "a", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"], seed=4)
    params = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.95)
    runs = []
    for merge in (True, False):
        sampler = HFSampler(tiny_model_path, merge_lora=merge)
        sampler.load_adapter(7, path)
        runs.append(sampler.sample([PROMPT, PROMPT[:4]], 3, params, [11, 12]))
    for group_a, group_b in zip(*runs):
        for a, b in zip(group_a, group_b):
            assert a.tokens == b.tokens and a.adapter_version == b.adapter_version == 7
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=logprob_tol(b.logprobs), rtol=0)  # fp32 rounding


def test_a_prompts_samples_do_not_depend_on_the_rest_of_the_batch(sampler):
    params = SamplingParams(max_tokens=10, temperature=1.0)
    alone = sampler.sample([PROMPT], 4, params, [5], version=None)[0]
    batched = sampler.sample([PROMPT[:3], PROMPT, PROMPT[:5] + [9, 9, 9]], 4, params, [6, 5, 7], version=None)[1]
    assert [s.tokens for s in alone] == [s.tokens for s in batched]
    for a, b in zip(alone, batched):  # left padding: only rounding may differ
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=logprob_tol(b.logprobs), rtol=0)


def test_a_seeded_group_is_the_same_as_single_requests_seeded_s_plus_k(sampler):
    """vLLM's rule for n > 1 (child k of seed s gets seed s + k), so pipeline=stream can ask for a group's
    sequences one by one and sample the same tokens as pipeline=sync's group requests."""
    params = SamplingParams(max_tokens=10, temperature=1.0)
    group = sampler.sample([PROMPT, PROMPT[:4]], 3, params, [40, 90], version=None)
    singles = sampler.sample([PROMPT] * 3 + [PROMPT[:4]] * 3, 1, params, [40, 41, 42, 90, 91, 92], version=None)
    assert [[s.tokens for s in g] for g in group] == [[s[0].tokens for s in singles[:3]],
                                                     [s[0].tokens for s in singles[3:]]]
    assert len({tuple(s.tokens) for s in group[0]}) > 1  # the rows of a group differ
    for a, b in zip([s for g in group for s in g], [s[0] for s in singles]):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=logprob_tol(b.logprobs), rtol=0)


def test_each_prompt_is_reported_the_moment_its_samples_end(sampler):
    """on_result(p, ...) comes at the token where prompt p's last row ends, before longer prompts finish,
    and reports what the call returns."""
    params = SamplingParams(max_tokens=30, temperature=1.0, stop=list(range(40, 400)))
    prompts = [PROMPT[:k] + [9] for k in range(2, 6)] * 2
    reported = []
    results = sampler.sample(prompts, 2, params, list(range(30, 38)), version=None,
                             on_result=lambda p, seqs: reported.append((p, seqs)))
    assert sorted(p for p, _ in reported) == list(range(len(prompts)))  # each prompt once
    for p, seqs in reported:
        assert [s.tokens for s in seqs] == [s.tokens for s in results[p]]
    longest = [max(len(s.tokens) for s in seqs) for _, seqs in reported]
    assert longest == sorted(longest) and longest[0] < longest[-1]  # shortest first, and lengths do differ


def test_identical_prompts_are_encoded_once(sampler, monkeypatch):
    widths = []
    forward = type(sampler.base).forward

    def counting(self, *args, input_ids=None, **kw):
        widths.append(tuple(input_ids.shape))
        return forward(self, *args, input_ids=input_ids, **kw)

    monkeypatch.setattr(type(sampler.base), "forward", counting)
    sampler.sample([PROMPT, PROMPT, PROMPT[:4], PROMPT], 1, SamplingParams(max_tokens=3, temperature=1.0),
                   [1, 2, 3, 4], version=None)
    assert widths[0] == (2, len(PROMPT))  # the prefill: two distinct prompts
    assert all(w == (4, 1) for w in widths[1:])  # then one token per row of the 4 requests


def test_inverse_cdf_draws_follow_the_distribution():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.15, 0.05])
    logp = torch.log(probs).repeat(4000, 1)  # 4000 rows, one generator each
    gens = [torch.Generator().manual_seed(s) for s in range(4000)]
    drawn = HFSampler._draw(logp, gens)
    counts = np.bincount(drawn.numpy(), minlength=5)
    assert counts[1] == 0  # never a zero-probability token
    expected = probs.numpy() * 4000
    keep = expected > 0
    chi2 = float((((counts - expected)[keep]) ** 2 / expected[keep]).sum())
    assert chi2 < 16.3  # chi-square, 3 degrees of freedom, p = 0.001
    again = HFSampler._draw(logp, [torch.Generator().manual_seed(s) for s in range(4000)])
    assert torch.equal(drawn, again)


def test_stop_strings_cut_the_text(sampler):
    params = SamplingParams(max_tokens=24, temperature=1.0)
    free = sampler.sample([PROMPT], 4, params, [21], version=None)[0]
    text = next(s.text for s in free if len(s.text.strip()) >= 4)
    stop = text.strip()[1:3]  # a string the unconstrained sample produced
    cut = sampler.sample([PROMPT], 4, SamplingParams(max_tokens=24, temperature=1.0, stop=[stop]), [21],
                         version=None)[0]
    for a, b in zip(free, cut):
        if stop in a.text:
            assert b.stop_reason == "stop" and stop not in b.text and a.text.startswith(b.text)
            assert len(b.tokens) <= len(a.tokens) and a.tokens[:len(b.tokens)] == b.tokens
        else:
            assert b.tokens == a.tokens
    assert any(stop in a.text for a in free)


def test_rslora_scaling_is_merged_as_peft_applies_it(tiny_model_path, tmp_path):
    path = _adapter(tiny_model_path, tmp_path / "rs", ["q_proj", "up_proj"], seed=5, use_rslora=True)
    config = json.loads((tmp_path / "rs" / "adapter_config.json").read_text())
    assert {scaling for _, _, scaling in merge_plan(path).values()} == {config["lora_alpha"] / config["r"] ** 0.5}
    sampler = HFSampler(tiny_model_path)
    sampler.load_adapter(1, path)
    tokens = PROMPT + list(range(300, 330))
    reference = _peft_reference_logprobs(tiny_model_path, path, tokens)
    np.testing.assert_allclose(sampler.compute_logprobs(tokens)[1:], reference, atol=logprob_tol(reference), rtol=0)
