"""Each Tinker loss: value and gradient equal numbers worked out by hand in this file (plain floats and
math.exp, never the code under test); sum reduction is checked by doubling the batch."""

import math

import pytest
import torch

from trainer.losses import check_loss, token_loss_sum

LP = [-1.0, -0.5, -2.0]  # learner logprobs lp_t
Q = [-1.2, -0.5, -1.0]  # sampler logprobs q_t
A = [2.0, -1.0, 0.5]  # advantages A_t
W = [1.0, 0.0, -0.5]  # cross-entropy weights (negative allowed)


def _run(loss_fn, config=None, lp=LP, **inputs):
    lp_T = torch.tensor(lp, dtype=torch.float64, requires_grad=True)
    tensors = {k: torch.tensor(v, dtype=torch.float64) for k, v in inputs.items()}
    loss = token_loss_sum(loss_fn, lp_T, tensors, check_loss(loss_fn, config))
    loss.backward()
    return loss.item(), lp_T.grad.tolist()


def test_cross_entropy_is_minus_weighted_sum():
    value, grad = _run("cross_entropy", weights=W)
    assert value == pytest.approx(-(1.0 * -1.0 + 0.0 * -0.5 + -0.5 * -2.0))  # = 0.0
    assert grad == pytest.approx([-1.0, 0.0, 0.5])


def test_importance_sampling_value_and_gradient():
    r = [math.exp(-1.0 + 1.2), math.exp(0.0), math.exp(-2.0 + 1.0)]  # 1.2214, 1, 0.3679
    value, grad = _run("importance_sampling", logprobs=Q, advantages=A)
    assert value == pytest.approx(-(r[0] * 2.0 + r[1] * -1.0 + r[2] * 0.5))
    assert value == pytest.approx(-1.6267, abs=1e-4)
    # d/dlp of -r*A is -r*A
    assert grad == pytest.approx([-r[0] * 2.0, -r[1] * -1.0, -r[2] * 0.5])


def test_ppo_clips_only_where_it_lowers_the_objective():
    r0, r2 = math.exp(0.2), math.exp(-1.0)  # 1.2214 (> 1.2), 0.3679 (< 0.8)
    value, grad = _run("ppo", logprobs=Q, advantages=A)
    # t0: A>0, r above 1.2 -> clipped term 1.2*2 is the min; no gradient.
    # t1: r = 1 inside the band -> -r*A, gradient -r*A = 1.
    # t2: A>0, r below 0.8 -> min(r*A, 0.8*A) = r*A (unclipped), gradient -r*A.
    assert value == pytest.approx(-(1.2 * 2.0 + 1.0 * -1.0 + r2 * 0.5))
    assert grad == pytest.approx([0.0, 1.0, -r2 * 0.5])
    assert r0 > 1.2


def test_ppo_custom_thresholds():
    value, _ = _run("ppo", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.5}, logprobs=Q, advantages=A)
    r0, r2 = math.exp(0.2), math.exp(-1.0)
    assert value == pytest.approx(-(r0 * 2.0 - 1.0 + r2 * 0.5))


def test_cispo_stops_gradient_through_the_clipped_ratio():
    r = [math.exp(0.2), 1.0, math.exp(-1.0)]
    value, grad = _run("cispo", logprobs=Q, advantages=A)  # default clip [0, 4]: nothing clipped here
    assert value == pytest.approx(-(r[0] * -1.0 * 2.0 + r[1] * -0.5 * -1.0 + r[2] * -2.0 * 0.5))
    assert grad == pytest.approx([-r[0] * 2.0, -r[1] * -1.0, -r[2] * 0.5])
    value, grad = _run("cispo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.1}, logprobs=Q, advantages=A)
    assert grad == pytest.approx([-1.1 * 2.0, 1.0, -0.8 * 0.5])


def test_dro_quadratic_penalty():
    beta = 0.3
    value, grad = _run("dro", {"beta": beta}, logprobs=Q, advantages=A)
    d = [0.2, 0.0, -1.0]  # lp - q
    assert value == pytest.approx(-sum(lp * a - 0.5 * beta * x * x for lp, a, x in zip(LP, A, d)))
    assert grad == pytest.approx([-(a - beta * x) for a, x in zip(A, d)])


@pytest.mark.parametrize("loss_fn", ["importance_sampling", "ppo", "cispo", "dro"])
def test_sum_reduction_doubles_with_the_batch(loss_fn):
    once, grad_once = _run(loss_fn, logprobs=Q, advantages=A)
    twice, grad_twice = _run(loss_fn, lp=LP + LP, logprobs=Q + Q, advantages=A + A)
    assert twice == pytest.approx(2 * once)
    assert grad_twice == pytest.approx(grad_once + grad_once)  # per token unchanged: no mean anywhere


def test_unknown_loss_and_config_key_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown loss_fn 'grpo'"):
        check_loss("grpo", None)
    with pytest.raises(ValueError, match="not implemented here"):
        check_loss("stable_reinforce", None)
    with pytest.raises(ValueError, match="'beta' is not used by ppo"):
        check_loss("ppo", {"beta": 1.0})
