"""Every built-in loss through the real learner: loss value and LoRA gradients equal an independent computation
written out in this file (a plain HF forward + the loss formula of TINKER_API.md section 5, never
trainer.losses); sum reduction is checked by doubling the batch; (N, K) cross-entropy targets work."""

import pytest
import tinker
import torch
from tolerances import grad_rel, logprob_tol, loss_tol


PROMPT = [1, 87, 85, 71, 84, 201, 2, 1]
COMPLETION = [326, 85, 297, 86, 19]
SEQ = PROMPT + COMPLETION
N = len(SEQ) - 1
# sampler logprobs = true logprob - DELTA, so ratios exp(DELTA) straddle the clip ranges used below
DELTA = torch.tensor([0.5, -0.5, 0.05, -0.3, 0.25, 0.0, 0.7, -0.9, 0.1, 0.3, -0.05, 0.4])
ADV = torch.tensor([1.0, -2.0, 0.5, 1.5, -1.0, 0.0, 2.0, 1.0, -0.5, -1.5, 1.0, 0.7])


def reference_logprobs(learner, targets=None):
    """log p(SEQ[t+1] | SEQ[:t+1]) from one plain forward of the PEFT model, (N,) or (N, K) for `targets`."""
    logits = learner.model(input_ids=torch.tensor([SEQ[:-1]])).logits[0]
    logp = torch.log_softmax(logits, -1)
    targets = torch.tensor(SEQ[1:])[:, None] if targets is None else targets
    return logp.gather(-1, targets).squeeze(-1)


def sampler_logprobs(learner):
    with torch.no_grad():
        return reference_logprobs(learner) - DELTA


def datum(**inputs):
    return tinker.Datum(model_input=tinker.ModelInput.from_ints(SEQ[:-1]),
                        loss_fn_inputs={"target_tokens": SEQ[1:], **{k: v.tolist() for k, v in inputs.items()}})


def close(a, b, rel=None):
    """Per tensor, relative to its norm: fp32 sums over different batch layouts differ in the last bits."""
    return float((a - b).norm()) <= (rel or grad_rel()) * float(b.norm()) + 1e-7


def grads_of(learner):
    grads = {n: p.grad.clone() for n, p in learner.named_params}
    learner.optimizer.zero_grad(set_to_none=True)
    return grads


def assert_matches_reference(learner, out, reference_loss):
    ours = grads_of(learner)
    reference_loss.backward()
    theirs = grads_of(learner)
    lps = out["loss_fn_outputs"][0]["logprobs"]
    assert out["metrics"]["loss:sum"] == pytest.approx(reference_loss.item(), abs=loss_tol(lps, ADV.abs().max()))
    assert all(close(ours[n], theirs[n]) for n in ours)
    assert sum(float(g.abs().sum()) for g in theirs.values()) > 0


def test_ppo_matches_clipped_surrogate(learner):
    q = sampler_logprobs(learner)
    out = learner.forward_backward([datum(logprobs=q, advantages=ADV)], "ppo",
                                   {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2})
    ratio = torch.exp(reference_logprobs(learner) - q)
    clipped = ratio.clamp(0.8, 1.2)
    assert (clipped != ratio).sum() >= 4  # the clip is really active on several tokens
    assert_matches_reference(learner, out, -torch.minimum(ratio * ADV, clipped * ADV).sum())


def test_cispo_stops_gradient_through_the_clipped_ratio(learner):
    q = sampler_logprobs(learner)
    out = learner.forward_backward([datum(logprobs=q, advantages=ADV)], "cispo",
                                   {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2})
    lp = reference_logprobs(learner)
    weight = torch.exp(lp - q).clamp(0.8, 1.2).detach()
    assert_matches_reference(learner, out, -(weight * lp * ADV).sum())


def test_dro_quadratic_penalty(learner):
    q = sampler_logprobs(learner)
    out = learner.forward_backward([datum(logprobs=q, advantages=ADV)], "dro", {"beta": 0.3})
    lp = reference_logprobs(learner)
    assert_matches_reference(learner, out, -(lp * ADV - 0.5 * 0.3 * (lp - q) ** 2).sum())


def test_cross_entropy_with_negative_weights(learner):
    weights = torch.linspace(-1.0, 2.0, N)
    out = learner.forward_backward([datum(weights=weights)], "cross_entropy")
    assert_matches_reference(learner, out, -(weights * reference_logprobs(learner)).sum())


def test_cross_entropy_top_k_targets(learner):
    targets = torch.stack([torch.tensor(SEQ[1:]), torch.arange(N) + 40, torch.arange(N) * 7 + 3], dim=1)
    weights = torch.tensor([[0.6, 0.3, 0.1]]).repeat(N, 1)
    d = tinker.Datum(model_input=tinker.ModelInput.from_ints(SEQ[:-1]), loss_fn_inputs={
        "target_tokens": tinker.TensorData(data=targets.flatten().tolist(), dtype="int64", shape=[N, 3]),
        "weights": tinker.TensorData(data=weights.flatten().tolist(), dtype="float32", shape=[N, 3])})
    out = learner.forward_backward([d], "cross_entropy")
    reference = reference_logprobs(learner, targets)
    assert out["loss_fn_outputs"][0]["logprobs"].shape == (N, 3)
    assert torch.allclose(out["loss_fn_outputs"][0]["logprobs"], reference.detach(), rtol=0,
                          atol=logprob_tol(reference))
    assert_matches_reference(learner, out, -(weights * reference).sum())


@pytest.mark.parametrize("loss_fn", ["cross_entropy", "importance_sampling", "ppo", "cispo", "dro"])
def test_sum_reduction_doubling_the_batch_doubles_loss_and_gradient(learner, loss_fn):
    q = sampler_logprobs(learner)
    d = datum(weights=ADV) if loss_fn == "cross_entropy" else datum(logprobs=q, advantages=ADV)
    once = learner.forward_backward([d], loss_fn)
    grads_once = grads_of(learner)
    twice = learner.forward_backward([d, d], loss_fn)
    grads_twice = grads_of(learner)
    lps = once["loss_fn_outputs"][0]["logprobs"]
    assert twice["metrics"]["loss:sum"] == pytest.approx(2 * once["metrics"]["loss:sum"],
                                                         abs=2 * loss_tol(lps, ADV.abs().max()))
    assert all(close(grads_twice[n], 2 * grads_once[n]) for n in grads_once)
    assert len(twice["loss_fn_outputs"]) == 2


def test_forward_gives_the_same_outputs_without_gradients(learner):
    d = datum(logprobs=sampler_logprobs(learner), advantages=ADV)
    fwd = learner.forward([d], "ppo")
    assert all(p.grad is None for p in learner.params)
    fb = learner.forward_backward([d], "ppo")
    # no_grad and autograd may pick different kernels (another summation order): equal up to fp32 rounding
    lps = fb["loss_fn_outputs"][0]["logprobs"]
    assert fwd["metrics"]["loss:sum"] == pytest.approx(fb["metrics"]["loss:sum"], abs=loss_tol(lps, ADV.abs().max()))
    assert torch.allclose(fwd["loss_fn_outputs"][0]["logprobs"], lps, rtol=0, atol=logprob_tol(lps))
    assert list(fwd["metrics"]) == ["loss:sum"]
