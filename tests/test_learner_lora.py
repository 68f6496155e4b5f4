"""LoRA configuration like Tinker's: which modules train, frozen base weights, seeded init, and a trainable
unembedding (lm_head LoRA) that HF/PEFT reloads exactly."""

import pytest
import tinker
import torch

from trainer.datums import rollout_datum
from trainer.learner import LoRALearner, LoraSpec
from tolerances import logprob_tol

PROMPT = [1, 87, 85, 71, 84, 201, 2, 1]
COMPLETION = [326, 85, 297, 86, 19]


def lora_modules(learner):
    return {name.split(".lora_")[0].rsplit(".", 1)[-1] for name, _ in learner.named_params}


@pytest.mark.parametrize("spec, expected", [
    (LoraSpec(rank=2), {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    (LoraSpec(rank=2, train_mlp=False), {"q_proj", "k_proj", "v_proj", "o_proj"}),
    (LoraSpec(rank=2, train_attn=False), {"gate_proj", "up_proj", "down_proj"}),
    (LoraSpec(rank=2, train_attn=False, train_mlp=False, train_unembed=True), {"lm_head"}),
])
def test_train_flags_choose_the_lora_targets(tiny_model_path, spec, expected):
    learner = LoRALearner(tiny_model_path, spec)
    assert lora_modules(learner) == expected
    assert all(".lora_A." in n or ".lora_B." in n for n, _ in learner.named_params)
    ranks = {min(p.shape) for _, p in learner.named_params}
    assert ranks == {2}


def test_training_nothing_is_an_error():
    with pytest.raises(ValueError, match="LoRA trains nothing"):
        LoraSpec(train_attn=False, train_mlp=False).target_modules()


def test_base_weights_stay_frozen_through_training(tiny_model_path):
    from transformers import AutoModelForCausalLM

    learner = LoRALearner(tiny_model_path, LoraSpec(rank=4, seed=1, train_unembed=True))
    datum = rollout_datum(PROMPT, COMPLETION, [-5.0] * len(COMPLETION), 1.0)
    for _ in range(3):
        learner.forward_backward([datum], "importance_sampling")
        learner.optim_step(tinker.AdamParams(learning_rate=1e-2, weight_decay=0.5))
    fresh = dict(AutoModelForCausalLM.from_pretrained(tiny_model_path).named_parameters())
    base = {n: p for n, p in learner.model.named_parameters() if "lora_" not in n}
    assert len(base) == len(fresh)
    for name, p in base.items():
        assert not p.requires_grad, name
        original = fresh[name.replace("base_model.model.", "", 1).replace(".base_layer", "")]
        assert torch.equal(p.detach(), original.detach()), name
    assert any(float(p.detach().abs().sum()) > 0 for n, p in learner.named_params if "lora_B" in n)  # it moved


def test_seed_fixes_the_lora_init(tiny_model_path):
    a, b, c = (LoRALearner(tiny_model_path, LoraSpec(rank=4, seed=s)) for s in (5, 5, 6))
    for (name, pa), (_, pb), (_, pc) in zip(a.named_params, b.named_params, c.named_params):
        assert torch.equal(pa, pb), name
        if "lora_A" in name:
            assert not torch.equal(pa, pc), name
        else:  # B starts at 0: the adapter starts as the base model
            assert float(pa.detach().abs().sum()) == 0.0


def test_unembed_lora_trains_and_reloads_in_peft(tiny_model_path, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    learner = LoRALearner(tiny_model_path, LoraSpec(rank=4, seed=2, train_unembed=True))
    datum = rollout_datum(PROMPT, COMPLETION, [-5.0] * len(COMPLETION), 1.0)
    learner.forward_backward([datum], "importance_sampling")
    assert {n for n, p in learner.named_params if "lm_head" in n and p.grad is not None}
    learner.optim_step(tinker.AdamParams(learning_rate=1e-2))
    learner.forward_backward([datum], "importance_sampling")  # now B != 0: lm_head's A gets a gradient too
    assert all(float(p.grad.abs().sum()) > 0 for n, p in learner.named_params if "lm_head" in n)
    learner.optim_step(tinker.AdamParams(learning_rate=1e-2))

    ours = learner.forward([datum], "importance_sampling")["loss_fn_outputs"][0]["logprobs"]
    path = learner.save_weights_for_sampler(str(tmp_path / "sampler"))
    saved = load_file(f"{path}/adapter_model.safetensors")
    assert all("lora_" in k for k in saved)  # LoRA only, not a copy of the frozen (vocab x hidden) lm_head
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), path).eval()
    seq = PROMPT + COMPLETION
    logp = torch.log_softmax(reloaded(input_ids=torch.tensor([seq[:-1]])).logits[0], -1)
    theirs = logp.gather(-1, torch.tensor(seq[1:])[:, None])[:, 0]
    assert torch.allclose(ours, theirs, rtol=0, atol=logprob_tol(theirs))
