"""save_state / load_state: a reloaded learner continues bit-exactly; weights-only loading starts a fresh
optimizer; a missing, corrupt or mismatched state is one clear error."""

import json

import pytest
import tinker
import torch

from trainer.datums import rollout_datum
from trainer.learner import LoRALearner, LoraSpec
from tolerances import tol

PROMPT = [1, 87, 85, 71, 84, 201, 2, 1]
ADAM = tinker.AdamParams(learning_rate=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, grad_clip_norm=3.0)


def batch(step):
    return [rollout_datum(PROMPT, [(31 * step + 7 * i + j) % 1500 + 30 for j in range(4 + i)],
                          [-5.0] * (4 + i), (-1.0) ** (i + step) * (0.5 + i)) for i in range(3)]


def train(learner, steps):
    for step in steps:
        learner.forward_backward(batch(step), "importance_sampling")
        learner.optim_step(ADAM)


def weights(learner):
    return {n: p.detach().clone() for n, p in learner.named_params}


@pytest.fixture(scope="module")
def saved(tiny_model_path, tmp_path_factory):
    """(state dir after 2 steps, weights after 2 steps, weights after an uninterrupted 3rd step)."""
    learner = LoRALearner(tiny_model_path, LoraSpec(rank=4, seed=11))
    train(learner, range(2))
    path = learner.save_state(str(tmp_path_factory.mktemp("state") / "s2"))
    after_two = weights(learner)
    train(learner, [2])
    return path, after_two, weights(learner)


def test_reloaded_learner_continues_bit_exactly(tiny_model_path, saved):
    path, _, uninterrupted = saved
    learner = LoRALearner(tiny_model_path, LoraSpec(rank=4, seed=99))  # another init: the state overrides it
    learner.load_state(path)
    assert learner.steps == 2
    train(learner, [2])
    assert learner.steps == 3
    for name, value in weights(learner).items():
        assert torch.equal(value, uninterrupted[name]), name


def test_weights_only_load_starts_a_fresh_optimizer(tiny_model_path, saved):
    path, after_two, _ = saved
    learner = LoRALearner(tiny_model_path, LoraSpec(rank=4, seed=99))
    learner.load_state(path, with_optimizer=False)
    assert learner.steps == 0 and len(learner.optimizer.state) == 0
    assert all(torch.equal(value, after_two[name]) for name, value in weights(learner).items())
    learner.forward_backward(batch(2), "importance_sampling")
    grads = {n: p.grad.clone() for n, p in learner.named_params}
    learner.optim_step(tinker.AdamParams(learning_rate=1e-3, eps=1e-12))
    for name, value in weights(learner).items():  # Adam's first step again: lr * sign(g)
        expected = after_two[name] - 1e-3 * torch.sign(grads[name])
        assert torch.allclose(value, expected, rtol=0, atol=tol(float(expected.abs().max()))), name  # fp32 ulps


def test_state_dir_also_holds_a_peft_adapter(saved):
    path, _, _ = saved
    meta = json.loads(open(f"{path}/state.json").read())
    assert meta["steps"] == 2 and meta["has_optimizer_state"] and meta["lora"]["rank"] == 4
    assert json.loads(open(f"{path}/adapter/adapter_config.json").read())["r"] == 4


def test_bad_states_are_one_clear_error(tiny_model_path, saved, tmp_path):
    path, _, _ = saved
    learner = LoRALearner(tiny_model_path, LoraSpec(rank=4, seed=1))
    before = weights(learner)
    with pytest.raises(FileNotFoundError, match="load_state: .*/nowhere does not exist"):
        learner.load_state(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a learner state \\(no state.json\\)"):
        learner.load_state(str(tmp_path / "empty"))

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "state.json").write_text(open(f"{path}/state.json").read())
    (broken / "state.safetensors").write_bytes(open(f"{path}/state.safetensors", "rb").read()[:200])
    with pytest.raises(ValueError, match="state.safetensors is corrupt"):
        learner.load_state(str(broken))
    (broken / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="state.json is corrupt"):
        learner.load_state(str(broken))

    with pytest.raises(ValueError, match="has .*lora_A.* with shape \\(4, .*this learner has \\(2, "):
        LoRALearner(tiny_model_path, LoraSpec(rank=2)).load_state(path)
    with pytest.raises(ValueError, match="has parameters this learner lacks"):
        LoRALearner(tiny_model_path, LoraSpec(rank=4, train_mlp=False)).load_state(path)
    assert all(torch.equal(v, before[n]) for n, v in weights(learner).items())  # failed loads changed nothing
