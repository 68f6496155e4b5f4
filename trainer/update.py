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
from trainer.rollouts import Rollout, render_prompt

if TYPE_CHECKING:
    from trainer.run_setup import Instance

PROBE_TEXT = "0123456789 circle packing 2.635"


class SamplerMismatch(RuntimeError):
    """The sampler is not serving the adapter the learner trained."""


def build_datums(cfg: TrainConfig, rollouts: list[Rollout], rewards_G_K: np.ndarray,
                 base) -> tuple[list, list[Rollout], dict]:
    """Constant groups carry no signal and are dropped (the last one is kept if all are, as TTT-Discover)."""
    G, K = rewards_G_K.shape
    mixed = [g for g in range(G) if not np.all(rewards_G_K[g] == rewards_G_K[g, 0])]
    stats = {"frac_mixed": len(mixed) / G}
    if cfg.mode == "expert_iteration":
        chosen = []
        for g in range(G):
            valid = [r for r in rollouts[g * K:(g + 1) * K] if r.result.ok]
            chosen += sorted(valid, key=lambda r: -r.result.reward)[:cfg.expert_top_k]
        stats["imitated"] = len(chosen)
        return [imitation_datum(r.prompt_tokens, r.tokens, r.mask) for r in chosen], chosen, stats
    keep = mixed or [G - 1]
    trained, advantages, betas = [], [], []
    for g in keep:
        advantages_K, beta = compute_advantages(rewards_G_K[g], cfg.advantage, cfg.advantage_beta)
        betas.append(beta)
        for r, a in zip(rollouts[g * K:(g + 1) * K], advantages_K):
            trained.append(r)
            advantages.append(np.full(len(r.tokens), float(a)))
    stats.update(M.beta_stats(betas))
    if base is not None:
        futures = [base.compute_logprobs(types.ModelInput.from_ints(r.prompt_tokens + r.tokens)) for r in trained]
        base_lps = [np.asarray(f.result()[len(r.prompt_tokens):], dtype=np.float64)
                    for f, r in zip(futures, trained)]
        advantages, stats["kl_sampler_base"] = fold_kl_penalty(
            advantages, [r.logprobs for r in trained], base_lps, [r.mask for r in trained], cfg.kl_coef)
    datums = [rollout_datum(r.prompt_tokens, r.tokens, r.logprobs, a.tolist(), r.mask)
              for r, a in zip(trained, advantages)]
    return datums, trained, stats


def train_step(cfg: TrainConfig, training, datums: list, trained: list[Rollout], adam, step: int, version: int,
               log) -> dict:
    """One forward_backward + optim_step; the learner's logprobs of the sampled tokens must equal the
    sampler's (both losses return them), else the sampler was not serving adapter v`version`."""
    loss_fn = "cross_entropy" if cfg.mode == "expert_iteration" else cfg.loss_fn
    config = dict(cfg.loss_fn_config)
    if cfg.temperature != 1.0:  # the learner replays the sampling temperature (expert iteration imitates it too)
        config["temperature"] = cfg.temperature
    fb_future = training.forward_backward(datums, loss_fn, config or None)
    optim_future = training.optim_step(adam)  # queued behind forward_backward, as the SDK pipelines them
    fb, optim = fb_future.result(), optim_future.result()
    stats = {"trained": True, "loss": fb.metrics.get("loss:sum"), "datums": len(datums),
             "tokens_trained": int(sum(d.model_input.length for d in datums)),
             "grad_norm": (optim.metrics or {}).get("grad_norm:mean")}
    fresh = [r.version == version for r in trained]  # async: older samplers differ by the updates since
    if any(fresh):
        deltas = M.sampler_learner_deltas(fb, trained, fresh)
        stats["mismatch_mean"], stats["mismatch_max"] = float(deltas.mean()), float(deltas.max())
        check(cfg, stats["mismatch_max"], f"step {step}: sampler and learner logprobs", version, log)
    if not all(fresh):  # how far the policy moved since those were sampled (the probe proves serving then)
        stats["stale_mismatch_mean"] = float(M.sampler_learner_deltas(fb, trained, [not f for f in fresh]).mean())
    return stats


def probe_tokens(cfg, tokenizer, inst: Instance) -> list[int]:
    prompt = render_prompt(tokenizer, inst.env.prompt(inst.buffer.nodes[0].state), cfg.chat_template_kwargs)
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
