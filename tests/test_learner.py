"""The PEFT LoRA learner on the real tiny model: loss and gradients against an independent computation,
Adam's first step against its closed form, adapters that PEFT reloads, and one-line input errors."""

import math

import pytest
import tinker
import torch

from trainer.datums import rollout_datum
from tolerances import grad_atol, grad_rel, logprob_tol, loss_tol, tol

PROMPT = [1, 87, 85, 71, 84, 201, 2, 1]
COMPLETION = [326, 85, 297, 86, 19]
SAMPLER_LP = [-7.1, -6.5, -8.0, -7.7, -6.9]


def test_importance_sampling_loss_and_gradient_match_an_independent_computation(learner):
    advantage = 1.7
    datum = rollout_datum(PROMPT, COMPLETION, SAMPLER_LP, advantage)
    out = learner.forward_backward([datum], "importance_sampling")
    grads = {n: p.grad.clone() for n, p in learner.model.named_parameters() if p.requires_grad}
    learner.optimizer.zero_grad()

    seq = PROMPT + COMPLETION
    logits = learner.model(input_ids=torch.tensor([seq[:-1]])).logits[0]
    logp = torch.log_softmax(logits, -1)
    lp_completion = [logp[len(PROMPT) - 1 + i, tok] for i, tok in enumerate(COMPLETION)]
    # loss = -sum_t exp(lp_t - q_t) * A over completion tokens only (prompt tokens have A = 0)
    reference = -sum(torch.exp(lp - q) * advantage for lp, q in zip(lp_completion, SAMPLER_LP))
    reference.backward()

    lps = out["loss_fn_outputs"][0]["logprobs"]
    assert out["metrics"]["loss:sum"] == pytest.approx(reference.item(), abs=loss_tol(lps, advantage))
    assert lps.shape == (len(seq) - 1,)
    want = torch.stack(lp_completion).detach()
    assert lps[len(PROMPT) - 1:].tolist() == pytest.approx(want.tolist(), abs=logprob_tol(want))
    for name, p in learner.model.named_parameters():
        if p.requires_grad:  # fp32: errors are relative to the tensor's scale
            torch.testing.assert_close(p.grad, grads[name], rtol=0, atol=grad_atol(grads[name]), msg=name)
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_gradients_accumulate_until_optim_step_and_adam_first_step_is_lr_sign(learner):
    datum = rollout_datum(PROMPT, COMPLETION, SAMPLER_LP, 1.0)
    learner.forward_backward([datum], "importance_sampling")
    once = {n: p.grad.clone() for n, p in learner.model.named_parameters() if p.requires_grad}
    learner.forward_backward([datum], "importance_sampling")
    for n, p in learner.model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, 2 * once[n], rtol=grad_rel(), atol=grad_atol(once[n]))
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters() if p.requires_grad}
    lr = 1e-3
    learner.optim_step(tinker.AdamParams(learning_rate=lr, beta1=0.9, beta2=0.95, eps=1e-12))
    # Adam's bias-corrected first step is lr * g / |g| = lr * sign(g) for every non-zero gradient
    for n, p in learner.model.named_parameters():
        if p.requires_grad:
            expected = before[n] - lr * torch.sign(once[n])
            assert torch.allclose(p.detach(), expected, rtol=0, atol=tol(float(expected.abs().max()))), n
            assert p.grad is None


def test_grad_clip_reports_the_global_norm_and_clips(learner):
    datum = rollout_datum(PROMPT, COMPLETION, SAMPLER_LP, 5.0)
    learner.forward_backward([datum], "importance_sampling")
    norm = math.sqrt(sum(float((p.grad ** 2).sum()) for p in learner.params))
    clipped = {}
    original_step = learner.optimizer.step
    learner.optimizer.step = lambda: clipped.setdefault(
        "norm", math.sqrt(sum(float((p.grad ** 2).sum()) for p in learner.params))) and original_step()
    metrics = learner.optim_step(tinker.AdamParams(learning_rate=0.0, grad_clip_norm=1e-3))
    n = sum(p.numel() for p in learner.params)  # the norm is one reduction over every gradient entry
    assert metrics["grad_norm:mean"] == pytest.approx(norm, rel=tol(1.0, n))
    assert norm > 1e-3 and clipped["norm"] == pytest.approx(1e-3, rel=tol(1.0, n))


def test_weight_decay_is_decoupled(learner):
    w_before = learner.params[0].detach().clone()
    learner.forward_backward([rollout_datum(PROMPT, COMPLETION, SAMPLER_LP, 0.0)], "importance_sampling")
    learner.optim_step(tinker.AdamParams(learning_rate=0.1, weight_decay=0.5))  # zero gradient: decay only
    assert torch.allclose(learner.params[0].detach(), w_before * (1 - 0.1 * 0.5), rtol=0,
                          atol=tol(float(w_before.abs().max())))  # one fp32 multiply


def test_saved_adapter_reloads_in_peft_with_identical_logprobs(learner, tiny_model_path, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    datum = rollout_datum(PROMPT, COMPLETION, SAMPLER_LP, 0.0)
    ours = learner.forward_backward([datum], "importance_sampling", forward_only=True)
    learner.save_adapter(str(tmp_path / "adapter"))
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path),
                                         str(tmp_path / "adapter")).eval()
    seq = PROMPT + COMPLETION
    logp = torch.log_softmax(reloaded(input_ids=torch.tensor([seq[:-1]])).logits[0], -1)
    theirs = logp.gather(-1, torch.tensor(seq[1:])[:, None])[:, 0]
    assert torch.allclose(ours["loss_fn_outputs"][0]["logprobs"], theirs, rtol=0, atol=logprob_tol(theirs))


def test_bad_datums_name_the_datum_and_the_field(learner):
    good = rollout_datum(PROMPT, COMPLETION, SAMPLER_LP, 1.0)
    missing = tinker.Datum(model_input=good.model_input,
                           loss_fn_inputs={"target_tokens": good.loss_fn_inputs["target_tokens"]})
    with pytest.raises(ValueError, match=r"datum 1: loss_fn_inputs lacks 'logprobs'"):
        learner.forward_backward([good, missing], "importance_sampling")
    short = tinker.Datum(model_input=good.model_input,
                         loss_fn_inputs={**good.loss_fn_inputs, "logprobs": tinker.TensorData(
                             data=[0.0, 0.0], dtype="float32", shape=[2])})
    with pytest.raises(ValueError, match=r"datum 0: loss_fn_inputs\['logprobs'\] has shape \(2,\)"):
        learner.forward_backward([short], "importance_sampling")
    huge = rollout_datum(PROMPT, [10**6], [0.0], 1.0)
    with pytest.raises(ValueError, match=r"datum 0: .*token id 1000000 outside the vocabulary"):
        learner.forward_backward([huge], "importance_sampling")
    with pytest.raises(ValueError, match="unknown loss_fn"):
        learner.forward_backward([good], "nope")


def test_more_bad_inputs_are_one_line_errors_naming_datum_and_field(learner):
    good = rollout_datum(PROMPT, COMPLETION, SAMPLER_LP, 1.0)
    n = good.model_input.length
    top_k = tinker.Datum(model_input=good.model_input, loss_fn_inputs={
        **good.loss_fn_inputs, "target_tokens": tinker.TensorData(data=[1] * (2 * n), dtype="int64", shape=[n, 2])})
    with pytest.raises(ValueError, match=r"datum 1: loss_fn_inputs\['target_tokens'\] has shape \(12, 2\), "
                                         r"expected \(12,\) like model_input"):
        learner.forward_backward([good, top_k], "importance_sampling")  # (N, K) targets: cross_entropy only
    with pytest.raises(ValueError, match=r"datum 0: loss_fn_inputs lacks 'weights', which cross_entropy needs"):
        learner.forward_backward([good], "cross_entropy")
    negative = tinker.Datum(model_input=tinker.ModelInput.from_ints([5, -3] + PROMPT[2:] + COMPLETION[:-1]),
                            loss_fn_inputs=good.loss_fn_inputs)
    with pytest.raises(ValueError, match=r"datum 0: model_input has token id -3 outside the vocabulary"):
        learner.forward_backward([negative], "importance_sampling")
    with pytest.raises(ValueError, match=r"datum 0: loss_fn_inputs lacks 'target_tokens', which base_logprobs needs"):
        learner.base_logprobs([tinker.Datum(model_input=good.model_input, loss_fn_inputs={})])
    with pytest.raises(ValueError, match=r"loss_fn_config key 'beta' is not used by ppo"):
        learner.forward_backward([good], "ppo", {"beta": 0.1})
    with pytest.raises(ValueError, match="no datums"):
        learner.forward([], "importance_sampling")
    assert all(p.grad is None for p in learner.params)  # every check runs before any compute
