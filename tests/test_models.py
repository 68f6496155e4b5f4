"""The embedded tiny model: built locally once, loads in transformers and PEFT, has a chat template;
model names resolve or fail with one clear line."""

import os

import pytest

from inference.models import ModelNotFound, ensure_tiny_model, resolve_model


def test_tiny_model_loads_in_transformers_and_peft(tiny_model_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert model.config.hidden_size == 128 and model.config.num_hidden_layers == 2
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 1.5e6
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok("123 + 456 = 579")["input_ids"]
    assert tok.decode(ids) == "123 + 456 = 579"  # byte-level BPE round-trips
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    assert peft_model.get_nb_trainable_parameters()[0] > 0


def test_tiny_model_is_cached_and_reused(tiny_model_path):
    weights = os.path.join(tiny_model_path, "model.safetensors")
    mtime = os.path.getmtime(weights)
    assert str(ensure_tiny_model()) == tiny_model_path == resolve_model("tiny")
    assert os.path.getmtime(weights) == mtime


def test_build_is_deterministic(tmp_path, tiny_model_path):
    from safetensors.torch import load_file

    rebuilt = ensure_tiny_model(tmp_path)
    a, b = load_file(os.path.join(tiny_model_path, "model.safetensors")), load_file(rebuilt / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_bad_model_names_give_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelNotFound, match="model path /no/such/model does not exist"):
        resolve_model("/no/such/model")
    with pytest.raises(ModelNotFound, match="has no config.json"):
        resolve_model(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="not in the local HF cache"):
        resolve_model("nobody/no-such-model-xyz")
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == str(tmp_path)
