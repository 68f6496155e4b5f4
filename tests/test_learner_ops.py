"""forward_backward_custom (Tinker's client-side custom loss), base_logprobs, get_info / get_tokenizer, and the
one-line errors of forward_backward_custom."""

import pytest
import tinker
import torch

from trainer.datums import rollout_datum
from tolerances import grad_rel, logprob_tol, loss_tol

PROMPT = [1, 87, 85, 71, 84, 201, 2, 1]
COMPLETIONS = [[326, 85, 297, 86, 19], [40, 41, 42], [500, 501, 502, 503, 504, 505, 506]]


def data():
    return [rollout_datum(PROMPT, c, [-4.0 - 0.1 * j for j in range(len(c))], adv)
            for c, adv in zip(COMPLETIONS, [1.5, -0.7, 0.4])]


def grads_of(learner):
    grads = {n: p.grad.clone() for n, p in learner.named_params}
    learner.optimizer.zero_grad(set_to_none=True)
    return grads


def importance_sampling_by_hand(data, logprobs_list):
    """-sum r_t A_t written against the Datum fields, the way a user of Tinker's SDK would."""
    loss, ratio_max = torch.zeros(()), 0.0
    for d, lp in zip(data, logprobs_list):
        ratio = torch.exp(lp - d.loss_fn_inputs["logprobs"].to_torch())
        loss = loss - (ratio * d.loss_fn_inputs["advantages"].to_torch()).sum()
        ratio_max = max(ratio_max, float(ratio.detach().max()))
    return loss, {"ratio:max": ratio_max}


def test_custom_loss_equal_to_importance_sampling_gives_the_builtin_gradients(learner):
    builtin = learner.forward_backward(data(), "importance_sampling")
    expected = grads_of(learner)
    custom = learner.forward_backward_custom(data(), importance_sampling_by_hand)
    got = grads_of(learner)
    for name in expected:
        assert float((got[name] - expected[name]).norm()) <= grad_rel() * float(expected[name].norm()) + 1e-7, name
    lps = torch.cat([o["logprobs"] for o in builtin["loss_fn_outputs"]])
    adv = max(float(d.loss_fn_inputs["advantages"].to_torch().abs().max()) for d in data())
    assert custom["metrics"]["loss:sum"] == pytest.approx(builtin["metrics"]["loss:sum"], abs=loss_tol(lps, adv))
    # surrogate = cross_entropy with weights -dL/dlp = sum_t (dL/dlp_t) lp_t = sum_t (-r_t A_t) lp_t
    surrogate = 0.0
    for d, out in zip(data(), builtin["loss_fn_outputs"]):
        lp = out["logprobs"]
        ratio = torch.exp(lp - d.loss_fn_inputs["logprobs"].to_torch())
        surrogate += float((-ratio * d.loss_fn_inputs["advantages"].to_torch() * lp).sum())
    assert custom["metrics"]["surrogate_loss:sum"] == pytest.approx(surrogate, abs=loss_tol(lps ** 2, adv))
    assert custom["metrics"]["ratio:max"] > 0
    for a, b in zip(custom["loss_fn_outputs"], builtin["loss_fn_outputs"]):
        assert torch.equal(a["logprobs"], b["logprobs"])  # the same forward pass: bit-equal


def test_custom_loss_errors_are_one_line_and_leave_no_gradient(learner):
    good = data()
    missing = [good[0], tinker.Datum(model_input=good[1].model_input, loss_fn_inputs={})]
    with pytest.raises(ValueError, match=r"datum 1: loss_fn_inputs lacks 'target_tokens', which "
                                         r"forward_backward_custom needs"):
        learner.forward_backward_custom(missing, importance_sampling_by_hand)

    def boom(data, logprobs):
        raise KeyError("advantages")

    cases = [
        (boom, r"loss_fn raised KeyError: 'advantages'"),
        (lambda d, lps: lps[0].sum(), r"must return \(loss tensor, metrics dict\), got Tensor"),
        (lambda d, lps: (torch.stack([lp.sum() for lp in lps]), {}), r"one-element tensor, got \(3,\)"),
        (lambda d, lps: (sum(lp.sum() for lp in lps), {"kl": 1.0}), r"metric 'kl' must be named 'name:reduction'"),
        (lambda d, lps: (lps[0].sum() + lps[2].sum(), {}), r"datum 1: loss_fn's loss has no gradient"),
        (lambda d, lps: (torch.tensor(1.0), {}), r"does not depend on the logprobs"),
    ]
    for loss_fn, message in cases:
        with pytest.raises(ValueError, match=message):
            learner.forward_backward_custom(good, loss_fn)
        assert all(p.grad is None for p in learner.params)  # nothing was half-accumulated


def test_base_logprobs_are_the_base_model_and_leave_the_adapter_on(learner, tiny_model_path):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    d = data()
    ours = learner.base_logprobs(d)
    for datum, lp in zip(d, ours):
        ids = datum.model_input.to_ints()
        logp = torch.log_softmax(base(input_ids=torch.tensor([ids])).logits[0], -1)
        expected = logp.gather(-1, datum.loss_fn_inputs["target_tokens"].to_torch()[:, None])[:, 0]
        assert torch.allclose(lp, expected, rtol=0, atol=logprob_tol(expected))
    adapted = learner.forward(d, "importance_sampling")["loss_fn_outputs"]
    assert (adapted[0]["logprobs"] - ours[0]).abs().max() > 1e-2  # the adapter is back on afterwards
    assert all(p.grad is None for p in learner.params)


def test_get_info_and_tokenizer_resolve_locally(learner, tiny_model_path):
    info = learner.get_info()
    assert isinstance(info, tinker.types.GetInfoResponse)
    assert info.is_lora and info.lora_rank == 4 and info.model_name == tiny_model_path
    assert info.model_data.tokenizer_id == tiny_model_path and info.model_data.arch == "Qwen2ForCausalLM"
    tokenizer = learner.get_tokenizer()
    assert tokenizer.decode(tokenizer.encode("1 + 2 = 3")) == "1 + 2 = 3"
