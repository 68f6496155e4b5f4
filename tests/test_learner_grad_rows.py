"""Tokens whose loss term has no gradient (advantage or weight 0) skip autograd through lm_head: the loss,
the logprobs and the gradients equal those of the all-rows computation, for every loss."""

import pytest
import torch
from tinker import types

import trainer.learner.lora_learner as learner_module
from trainer.losses import rows_with_gradient
from tolerances import grad_atol, logprob_tol, loss_tol, weight_scale

PROMPT = [1, 87, 85, 71, 84, 201, 2, 1, 44, 45]


def _datums(loss_fn):
    g = torch.Generator().manual_seed(3)
    datums = []
    for i in range(4):
        completion = torch.randint(3, 400, (6 + i,), generator=g).tolist()
        tokens = PROMPT + completion
        n = len(tokens) - 1
        advantages = [0.0] * (len(PROMPT) - 1) + torch.randn(len(completion), generator=g).tolist()
        advantages[-2] = 0.0  # a zero inside the completion too
        inputs = {"target_tokens": tokens[1:]}
        if loss_fn == "cross_entropy":
            inputs["weights"] = [0.0 if a == 0 else 1.0 for a in advantages]
        else:
            inputs["logprobs"] = [0.0] * (len(PROMPT) - 1) + (-torch.rand(len(completion), generator=g) * 3).tolist()
            inputs["advantages"] = advantages
        assert len(inputs["target_tokens"]) == n
        datums.append(types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs))
    return datums


def test_rows_with_gradient_by_loss():
    adv = torch.tensor([0.0, 1.5, 0.0, -2.0])
    assert rows_with_gradient("importance_sampling", {"advantages": adv}).tolist() == [False, True, False, True]
    assert rows_with_gradient("ppo", {"advantages": adv}).tolist() == [False, True, False, True]
    assert rows_with_gradient("cispo", {"advantages": adv}).tolist() == [False, True, False, True]
    assert rows_with_gradient("dro", {"advantages": adv}).tolist() == [True] * 4  # (lp - q)^2 everywhere
    weights_NK = torch.tensor([[0.0, 0.0], [0.0, 0.3], [1.0, 0.0]])
    assert rows_with_gradient("cross_entropy", {"weights": weights_NK}).tolist() == [False, True, True]


@pytest.mark.parametrize("loss_fn", ["importance_sampling", "ppo", "cispo", "dro", "cross_entropy"])
def test_skipping_gradient_free_rows_changes_nothing(learner, monkeypatch, loss_fn):
    data = _datums(loss_fn)

    def step():
        out = learner.forward_backward(data, loss_fn)
        grads = {n: p.grad.clone() for n, p in learner.model.named_parameters() if p.requires_grad}
        learner.optimizer.zero_grad(set_to_none=True)
        return out, grads

    split_out, split_grads = step()
    monkeypatch.setattr(learner_module, "rows_with_gradient",
                        lambda _loss, inputs: torch.ones(inputs["target_tokens"].shape[0], dtype=torch.bool))
    full_out, full_grads = step()
    lps = torch.cat([o["logprobs"] for o in full_out["loss_fn_outputs"]])
    assert split_out["metrics"]["loss:sum"] == pytest.approx(full_out["metrics"]["loss:sum"], abs=loss_tol(lps, weight_scale(data, loss_fn == "dro")))
    for a, b in zip(split_out["loss_fn_outputs"], full_out["loss_fn_outputs"]):
        torch.testing.assert_close(a["logprobs"], b["logprobs"], rtol=0, atol=logprob_tol(b["logprobs"]))
    for name, g in full_grads.items():
        torch.testing.assert_close(split_grads[name], g, rtol=0, atol=grad_atol(g), msg=name)
    assert any(float(g.abs().max()) > 0 for g in full_grads.values())
