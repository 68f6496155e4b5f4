"""The policy update of one step, and its proof: advantages -> datums -> forward_backward + optim_step, with the
learner's logprobs of the sampled tokens checked against the sampler's (and a fixed probe after each swap), so
a sampler that is not serving the trained adapter stops the run instead of training on garbage."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from tinker import types

from trainer import metrics as M
from trainer.advantages import compute_advantages
from trainer.config import TrainConfig
from trainer.datums import imitation_datum, rollout_datum
from trainer.kl import fold_kl_penalty
from trainer.rollouts import Rollout, state_prompt

if TYPE_CHECKING:
    from trainer.run_setup import Instance

PROBE_TEXT = "0123456789 circle packing 2.635"


class SamplerMismatch(RuntimeError):
    """The sampler is not serving the adapter the learner trained."""


class StepUpdate:
    """One step's policy update, fed group by group as each group's evaluations end. Constant groups carry no
    signal and are dropped (the last one is kept if all are, as TTT-Discover). With `early` (pipeline stream and
    async) each group's datums go to forward_backward at once, so the learner works while the step's last
    answers are still verified; gradients accumulate until optim_step and the loss is a sum, so it is the same
    update up to float summation order. KL shaping needs the whole step's mean KL: with kl_coef > 0 every
    datum waits for the last group, as with sync, which sends one forward_backward in group order."""

    def __init__(self, cfg: TrainConfig, training, reference, groups: int, early: bool):
        """`reference`: the sampling client the KL penalty measures against (the base model or the SFT adapter),
        None without KL shaping."""
        self.cfg, self.training, self.reference, self.G = cfg, training, reference, groups
        self.early = early and reference is None
        self.loss_fn = "cross_entropy" if cfg.mode == "expert_iteration" else cfg.loss_fn
        self.config = dict(cfg.loss_fn_config)
        if cfg.temperature != 1.0:  # the learner replays the sampling temperature (expert iteration imitates it)
            self.config["temperature"] = cfg.temperature
        self.last_group: tuple[list[Rollout], np.ndarray] | None = None  # trained if every group is constant
        self.waiting: list[tuple[list[Rollout], list[np.ndarray] | None]] = []  # (rollouts, advantages | imitate)
        self.sent: list[tuple[object, list[Rollout], list]] = []  # (forward_backward future, rollouts, datums)
        self.mixed, self.betas, self.imitated = 0, [], 0
        self.stats: dict = {}

    def add_group(self, g: int, rollouts_K: list[Rollout]) -> None:
        rewards_K = np.array([r.result.reward for r in rollouts_K])
        if g == self.G - 1:
            self.last_group = (rollouts_K, rewards_K)
        if self.cfg.mode == "expert_iteration":
            chosen = sorted([r for r in rollouts_K if r.result.ok], key=lambda r: -r.result.reward)
            chosen = chosen[:self.cfg.expert_top_k]
            self.imitated += len(chosen)
            if chosen:
                self._queue(chosen, None)
        elif not np.all(rewards_K == rewards_K[0]):
            self.mixed += 1
            self._queue_advantaged(rollouts_K, rewards_K)

    def finish(self, step: int, version: int, adam, log) -> dict:
        """The step's last datums, one optim_step, and the check that the sampler served adapter v`version`:
        the learner's logprobs of the sampled tokens must equal the sampler's (both losses return them)."""
        if self.cfg.mode != "expert_iteration" and self.mixed == 0 and self.last_group is not None:
            self._queue_advantaged(*self.last_group)
        self._send()
        stats = {"frac_mixed": self.mixed / self.G, **self.stats}
        if self.cfg.mode == "expert_iteration":
            stats["imitated"] = self.imitated
        else:
            stats.update(M.beta_stats(self.betas))
        if not self.sent:
            return stats
        optim = self.training.optim_step(adam).result()  # queued behind every forward_backward, as the SDK does
        outputs = [future.result() for future, _, _ in self.sent]
        trained = [r for _, rollouts, _ in self.sent for r in rollouts]
        datums = [d for _, _, batch in self.sent for d in batch]
        fb = types.ForwardBackwardOutput(loss_fn_output_type=outputs[0].loss_fn_output_type, metrics={},
                                         loss_fn_outputs=[x for o in outputs for x in o.loss_fn_outputs])
        losses = [o.metrics.get("loss:sum") for o in outputs]
        stats.update({"trained": True, "loss": None if None in losses else float(sum(losses)),
                      "datums": len(datums), "tokens_trained": int(sum(d.model_input.length for d in datums)),
                      "grad_norm": (optim.metrics or {}).get("grad_norm:mean")})
        fresh = [r.version == version for r in trained]  # async: older samplers differ by the updates since
        if any(fresh):
            deltas = M.sampler_learner_deltas(fb, trained, fresh)
            stats["mismatch_mean"], stats["mismatch_max"] = float(deltas.mean()), float(deltas.max())
            check(self.cfg, stats["mismatch_max"], f"step {step}: sampler and learner logprobs", version, log)
        if not all(fresh):  # how far the policy moved since those were sampled (the probe proves serving then)
            stats["stale_mismatch_mean"] = float(M.sampler_learner_deltas(fb, trained, [not f for f in fresh]).mean())
        return stats

    # ---- the pieces ----
    def _queue_advantaged(self, rollouts_K: list[Rollout], rewards_K: np.ndarray) -> None:
        advantages_K, beta = compute_advantages(rewards_K, self.cfg.advantage, self.cfg.advantage_beta)
        self.betas.append(beta)
        self._queue(rollouts_K, [np.full(len(r.tokens), float(a)) for r, a in zip(rollouts_K, advantages_K)])

    def _queue(self, rollouts: list[Rollout], advantages: list[np.ndarray] | None) -> None:
        self.waiting.append((rollouts, advantages))
        if self.early:
            self._send()

    def _send(self) -> None:
        """One forward_backward for everything waiting (KL shaping first, over all of it)."""
        if not self.waiting:
            return
        trained = [r for rollouts, _ in self.waiting for r in rollouts]
        if self.cfg.mode == "expert_iteration":
            datums = [imitation_datum(r.prompt_tokens, r.tokens, r.mask) for r in trained]
        else:
            advantages = [a for _, advantages in self.waiting for a in advantages]
            if self.reference is not None:  # its metric keeps the name kl_sampler_base, whichever the reference
                futures = [self.reference.compute_logprobs(types.ModelInput.from_ints(r.prompt_tokens + r.tokens))
                           for r in trained]
                reference_lps = [np.asarray(f.result()[len(r.prompt_tokens):], dtype=np.float64)
                                 for f, r in zip(futures, trained)]
                advantages, self.stats["kl_sampler_base"] = fold_kl_penalty(
                    advantages, [r.logprobs for r in trained], reference_lps, [r.mask for r in trained],
                    self.cfg.kl_coef)
            datums = [rollout_datum(r.prompt_tokens, r.tokens, r.logprobs, a.tolist(), r.mask)
                      for r, a in zip(trained, advantages)]
        self.waiting = []
        future = self.training.forward_backward(datums, self.loss_fn, self.config or None)
        self.sent.append((future, trained, datums))


def probe_tokens(cfg, tokenizer, inst: Instance) -> list[int]:
    prompt = state_prompt(tokenizer, inst.env, inst.buffer.nodes[0].state, cfg.chat_template_kwargs)
    return prompt + tokenizer.encode(PROBE_TEXT, add_special_tokens=False)


def check_probe(cfg, training, sampling, probe_tokens: list[int], version: int, log) -> float:
    """The proof of serving: the sampler's logprobs of a fixed probe equal the learner's."""
    served = sampling.compute_logprobs(types.ModelInput.from_ints(probe_tokens)).result()[1:]
    datum = types.Datum(model_input=types.ModelInput.from_ints(probe_tokens[:-1]), loss_fn_inputs={
        "target_tokens": probe_tokens[1:], "weights": [0.0] * (len(probe_tokens) - 1)})
    trained = training.forward([datum], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].to_numpy()
    delta = float(np.abs(np.asarray(served, dtype=np.float64) - trained).max())
    check(cfg, delta, f"after swapping to v{version}, probe logprobs of sampler and learner", version, log)
    return delta


def check(cfg, delta: float, what: str, version: int, log) -> None:
    if delta <= cfg.mismatch_threshold:
        return
    message = (f"{what} differ by {delta:.2e} (> {cfg.mismatch_threshold:g}): "
               f"the sampler is not serving adapter v{version}")
    if cfg.on_mismatch == "stop":
        raise SamplerMismatch(message)
    log(f"warning: {message}")
