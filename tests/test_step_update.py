"""trainer/update.py StepUpdate: with stream/async each group with signal goes to forward_backward the moment it
is added (the learner works while later answers are verified); sync sends one forward_backward in group order.
Both send the same datums; constant groups are dropped, the last one kept if all are; KL shaping (it needs the
whole step's mean KL) makes everything wait for the last group."""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np
from tinker import types

from envs.base import VerifyResult
from trainer.config import compose
from trainer.rollouts import Rollout
from trainer.update import StepUpdate

K = 3


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


class Learner:
    """Records forward_backward calls; echoes the sampler's logprobs (a learner serving the same weights)."""

    def __init__(self):
        self.calls: list[list[types.Datum]] = []
        self.optim_steps = 0

    def forward_backward(self, datums, loss_fn, config=None):
        self.calls.append(datums)
        outputs = [{"logprobs": types.TensorData.from_numpy(np.concatenate(
            [np.zeros(len(d.model_input.to_ints()) - len(d.loss_fn_inputs["logprobs"].to_numpy()), np.float32),
             d.loss_fn_inputs["logprobs"].to_numpy()]))} for d in datums]
        return _done(types.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs,
                                                 metrics={"loss:sum": float(len(datums))}))

    def optim_step(self, adam):
        self.optim_steps += 1
        return _done(types.OptimStepResponse(metrics={"grad_norm:mean": 1.0}))


class Base:
    def compute_logprobs(self, model_input):
        return _done([None] + [-2.0] * (model_input.length - 1))


def _group(g: int, rewards) -> list[Rollout]:
    rollouts = [Rollout(group=g, index=g * K + k, parent_id=0, prompt_tokens=[1, 2, 3], tokens=[4 + k + 10 * g, 5],
                        logprobs=[-1.0, -1.5], mask=[1, 1], text="x", stop_reason="stop",
                        result=VerifyResult(status="ok", reward=r, score=r, value=r))
                for k, r in enumerate(rewards)]
    return rollouts


def _update(tmp_path, early: bool, *overrides, base=None) -> tuple[StepUpdate, Learner]:
    cfg = compose(["+experiment=demo", f"out={tmp_path}", f"group_size={K}", *overrides])
    learner = Learner()
    return StepUpdate(cfg, learner, base, groups=3, early=early), learner


def _datums(learner: Learner) -> list:
    return [(d.model_input.to_ints(), d.loss_fn_inputs["advantages"].to_numpy().tolist())
            for call in learner.calls for d in call]


def test_stream_sends_each_group_at_once_and_the_same_datums_as_sync(tmp_path):
    groups = [_group(0, [0.1, 0.5, 0.9]), _group(1, [0.3, 0.3, 0.3]), _group(2, [1.0, 0.0, 0.5])]
    early, early_learner = _update(tmp_path, True)
    late, late_learner = _update(tmp_path, False)
    for g, rollouts in enumerate(groups):
        early.add_group(g, rollouts)
        late.add_group(g, rollouts)
    assert len(early_learner.calls) == 2 and len(late_learner.calls) == 0  # groups 0 and 2; group 1 is constant
    stats_early = early.finish(0, 0, None, print)
    stats_late = late.finish(0, 0, None, print)
    assert len(late_learner.calls) == 1 and early_learner.optim_steps == late_learner.optim_steps == 1
    assert _datums(early_learner) == _datums(late_learner)
    assert len(_datums(late_learner)) == 2 * K
    for key in ("frac_mixed", "datums", "tokens_trained", "loss", "mismatch_max", "beta_mean"):
        assert stats_early[key] == stats_late[key], key
    assert stats_early["frac_mixed"] == 2 / 3 and stats_early["mismatch_max"] == 0.0


def test_all_constant_groups_train_on_the_last_one(tmp_path):
    update, learner = _update(tmp_path, True)
    for g in range(3):
        update.add_group(g, _group(g, [0.2, 0.2, 0.2]))
    assert learner.calls == []
    stats = update.finish(0, 0, None, print)
    assert [d.model_input.to_ints()[3:] for d in learner.calls[0]] == [[24], [25], [26]]  # group 2, all K
    assert stats["frac_mixed"] == 0 and stats["trained"]


def test_kl_shaping_waits_for_the_whole_step(tmp_path):
    update, learner = _update(tmp_path, True, "kl_coef=0.1", base=Base())
    update.add_group(0, _group(0, [0.1, 0.5, 0.9]))
    update.add_group(1, _group(1, [0.0, 1.0, 0.5]))
    assert learner.calls == []  # the mean KL over every trained token is not known yet
    stats = update.finish(0, 0, None, print)
    assert len(learner.calls) == 1 and stats["kl_sampler_base"] == 0.75  # mean(-1, -1.5) - (-2)
