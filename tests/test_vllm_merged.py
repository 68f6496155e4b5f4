"""vLLM serving adapters merged into its weights (adapter_mode=merged, inference/vllm_weights.py), on the real
engine: logprobs equal PEFT's own unmerged LoRA layers for the base model and several adapters, whatever order
versions are asked for in (switching back to the base model restores it exactly), seeded samples reproduce, and
an adapter vLLM cannot merge is refused with one clear error."""

import numpy as np
import pytest

from inference.types import SamplingParams
from test_hf_sampler import PROMPT, _adapter, _peft_reference_logprobs
from tolerances import logprob_tol

pytestmark = pytest.mark.vllm
TOKENS = PROMPT + list(range(100, 160))


@pytest.fixture(scope="module")
def merged_sampler(tiny_model_path):
    from inference.vllm_sampler import VLLMSampler

    sampler = VLLMSampler(tiny_model_path, adapter_mode="merged", seed=0)
    yield sampler
    sampler.close()


@pytest.fixture(scope="module")
def adapters(tiny_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("merged_adapters")
    # the second adapter leaves q/v/down alone: the layers the first one touched must go back to the base
    return {1: _adapter(tiny_model_path, root / "a", ["q_proj", "v_proj", "down_proj"], seed=1),
            2: _adapter(tiny_model_path, root / "b", ["k_proj", "gate_proj", "o_proj"], seed=2)}


def _served(sampler, version):
    return np.array(sampler.compute_logprobs(TOKENS, version=version)[1:])


def test_merged_logprobs_equal_peft_in_any_order(merged_sampler, tiny_model_path, adapters):
    references = {v: _peft_reference_logprobs(tiny_model_path, path, TOKENS) for v, path in adapters.items()}
    base = _served(merged_sampler, None)
    merged_sampler.load_adapter(1, adapters[1])
    first = _served(merged_sampler, 1)
    np.testing.assert_allclose(first, references[1], atol=logprob_tol(references[1]), rtol=0)
    assert np.abs(first - base).max() > 1e-2  # the adapter does change the model
    assert np.array_equal(_served(merged_sampler, None), base)  # the base model comes back exactly
    assert np.array_equal(_served(merged_sampler, 1), first)  # and so does the adapter
    merged_sampler.load_adapter(2, adapters[2])
    second = _served(merged_sampler, 2)
    np.testing.assert_allclose(second, references[2], atol=logprob_tol(references[2]), rtol=0)
    assert np.array_equal(_served(merged_sampler, None), base)
    with pytest.raises(ValueError, match="version 1 is not loaded"):
        merged_sampler.compute_logprobs(TOKENS, version=1)


def test_merged_sampling_is_seeded_and_tagged(merged_sampler, adapters):
    merged_sampler.load_adapter(3, adapters[1])
    params = SamplingParams(max_tokens=16, seed=11)
    a = merged_sampler.sample([PROMPT], 3, params)[0]
    merged_sampler.sample([PROMPT], 3, params, version=None)  # a detour through the base model
    b = merged_sampler.sample([PROMPT], 3, params)[0]
    assert [s.tokens for s in a] == [s.tokens for s in b]
    assert {s.adapter_version for s in a} == {3}
    reference = _served(merged_sampler, 3)
    for seq in a:  # the sampled logprobs are the served model's (temperature 1: processed == raw)
        scored = np.array(merged_sampler.compute_logprobs(PROMPT + seq.tokens)[len(PROMPT):])
        np.testing.assert_allclose(seq.logprobs, scored, atol=logprob_tol(reference), rtol=0)


def test_unmergeable_adapter_is_refused_with_one_line(merged_sampler, tiny_model_path, tmp_path):
    dora = _adapter(tiny_model_path, tmp_path / "dora", ["q_proj"], seed=3, use_dora=True)
    with pytest.raises(ValueError, match="adapter_mode=lora"):
        merged_sampler.load_adapter(9, dora)
    with pytest.raises(ValueError, match="adapter_mode must be"):
        from inference.vllm_sampler import VLLMSampler

        VLLMSampler(tiny_model_path, adapter_mode="fused")


def test_the_loop_proves_every_merged_swap(merged_sampler, tmp_path):
    """The toy demo's loop on the merged engine: every step's new adapter is served (the per-step check and the
    probe compare the sampler's logprobs with the learner's), and the adapter does move the model."""
    from trainer.config import compose
    from trainer.loop import run

    cfg = compose(["+experiment=demo", f"out={tmp_path}", "wandb_mode=disabled", "steps=3", "groups=2",
                   "group_size=4", "max_tokens=12", "learning_rate=1e-2", "verifier_backend=local"])
    records = run(cfg, sampler=merged_sampler, log=lambda *_: None)
    assert [r["adapter_version"] for r in records] == [1, 2, 3]
    assert all(r["mismatch_max"] < 1e-4 and r["probe_mismatch"] < 1e-4 for r in records)
    assert records[-1]["grad_norm"] > 0


def test_a_discovery_step_starts_the_answer_inside_the_list(merged_sampler, tmp_path):
    from hydra.utils import instantiate

    from trainer.config import compose
    from trainer.loop import run
    from trainer.report import read_jsonl
    from trainer.rollouts import state_prompt

    cfg = compose(["+experiment=discovery", "model=tiny", f"out={tmp_path}", "wandb_mode=disabled", "steps=1",
                   "groups=2", "group_size=2", "max_tokens=8"])
    records = run(cfg, sampler=merged_sampler, log=lambda *_: None)
    assert records[0]["groups"] == 2 and len(read_jsonl(tmp_path / "rollouts.jsonl")) == 4
    env, tokenizer = instantiate(cfg.env), merged_sampler.get_tokenizer()
    prompt = state_prompt(tokenizer, env, env.initial_states()[0])
    chat = tokenizer.apply_chat_template([{"role": "user", "content": env.prompt(env.initial_states()[0])}],
                                         add_generation_prompt=True, tokenize=True, return_dict=False)
    assert prompt == list(chat) + tokenizer.encode("[", add_special_tokens=False)
