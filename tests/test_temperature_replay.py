"""Sampling temperature is replayed on the learner: with loss_fn_config temperature=T it scores
log_softmax(logits / T), the distribution a sampler at temperature T drew from (samplers return processed
logprobs), so importance ratios are 1 on-policy. Without the replay a small real model sampled at T=0.7 showed
|sampler - learner| = 3.2 nats at step 0 and the loop stopped."""

import pytest
import tinker
import torch
from tolerances import grad_rel, logprob_tol, loss_tol

from trainer.losses import check_loss

PROMPT = [1, 87, 85, 71, 84, 201, 2, 1]
T = 0.7


def test_learner_scores_the_tempered_distribution(learner):
    from inference.hf_sampler import HFSampler
    from inference.types import SamplingParams

    sampler = HFSampler(learner.model_path)
    seqs = sampler.sample([PROMPT], 3, SamplingParams(max_tokens=12, temperature=T, seed=5), version=None)[0]
    with torch.no_grad():  # the fixture's adapter is non-trivial: zero it, so the learner is the sampled base model
        for name, p in learner.model.named_parameters():
            if "lora_B" in name:
                p.zero_()
    for seq in seqs:
        tokens = PROMPT + list(seq.tokens)
        d = tinker.Datum(model_input=tinker.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs={
            "target_tokens": tokens[1:], "logprobs": [0.0] * (len(PROMPT) - 1) + list(seq.logprobs),
            "advantages": [0.0] * (len(PROMPT) - 1) + [1.0] * len(seq.tokens)})
        tempered = learner.forward([d], "importance_sampling", {"temperature": T})["loss_fn_outputs"][0]["logprobs"]
        plain = learner.forward([d], "importance_sampling")["loss_fn_outputs"][0]["logprobs"]
        sampled = torch.tensor(seq.logprobs)
        ours = tempered[len(PROMPT) - 1:]
        assert torch.allclose(ours, sampled, rtol=0, atol=logprob_tol(sampled)), (ours - sampled).abs().max()
        assert (plain[len(PROMPT) - 1:] - sampled).abs().max() > 1e-2  # without the replay they differ
        # an independent reference: a plain forward of the model, logits / T, log_softmax, in float64
        with torch.no_grad():
            logits = learner.model(input_ids=torch.tensor([tokens[:-1]])).logits[0].double()
        reference = torch.log_softmax(logits / T, -1).gather(-1, torch.tensor(tokens[1:])[:, None])[:, 0]
        assert torch.allclose(tempered.double(), reference, rtol=0, atol=logprob_tol(tempered))


def test_tempered_gradient_matches_an_independent_loss(learner):
    seq = PROMPT + [326, 85, 297, 86, 19]
    adv = torch.tensor([0.0] * (len(PROMPT) - 1) + [1.0, -2.0, 0.5, 1.5, -1.0])
    q = torch.full((len(seq) - 1,), -2.0)
    d = tinker.Datum(model_input=tinker.ModelInput.from_ints(seq[:-1]), loss_fn_inputs={
        "target_tokens": seq[1:], "logprobs": q.tolist(), "advantages": adv.tolist()})
    out = learner.forward_backward([d], "importance_sampling", {"temperature": T})
    ours = {n: p.grad.clone() for n, p in learner.named_params}
    learner.optimizer.zero_grad(set_to_none=True)
    logits = learner.model(input_ids=torch.tensor([seq[:-1]])).logits[0]
    lp = torch.log_softmax(logits / T, -1).gather(-1, torch.tensor(seq[1:])[:, None])[:, 0]
    reference = -(torch.exp(lp - q) * adv).sum()
    reference.backward()
    lps = out["loss_fn_outputs"][0]["logprobs"]
    assert out["metrics"]["loss:sum"] == pytest.approx(reference.item(), abs=loss_tol(lps, float(adv.abs().max())))
    for n, p in learner.named_params:
        assert float((ours[n] - p.grad).norm()) <= grad_rel() * float(p.grad.norm()) + 1e-7, n


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_temperature_is_one_clear_error(bad):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        check_loss("importance_sampling", {"temperature": bad})
