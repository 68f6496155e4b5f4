"""The RL loop, top to bottom: sample groups with adapter v -> verify on Ray -> entropic advantages ->
importance-sampling step -> save adapter v+1 -> hot-swap it into vLLM -> next step samples with v+1.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tinker

from envs.base import State
from envs.pool import VerifierPool
from inference.models import resolve_model
from inference.samplers import make_sampler
from inference.types import SamplingParams
from trainer.advantages import compute_advantages
from trainer.datums import completion_logprobs, rollout_datum
from trainer.envs import make_env
from trainer.learner import LoRALearner, LoraSpec
from trainer.report import append_jsonl, plot_curves, table_header, table_row


@dataclass
class LoopConfig:
    model: str = "tiny"
    env: str = "toy_digits"
    out: str = "runs/demo"
    steps: int = 12
    groups: int = 4  # G prompts per step
    group_size: int = 8  # K completions per prompt
    max_tokens: int = 16
    temperature: float = 1.0
    lora_rank: int = 8
    learning_rate: float = 3e-3
    advantage: str = "entropic_adaptive_beta"
    seed: int = 0
    sampler: str = "vllm"  # vllm | hf (HF/PEFT, for machines without vLLM)
    verifier_backend: str = "ray"
    max_model_len: int = 512
    # fp32 vLLM and the learner agree to ~3e-6; beyond this the sampler is not serving what we trained
    mismatch_threshold: float = 1e-3

    def check(self) -> None:
        for name in ("steps", "groups", "group_size", "max_tokens", "lora_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


class SamplerMismatch(RuntimeError):
    pass


def render_prompt(tokenizer, text: str) -> list[int]:
    return list(tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                              tokenize=True, return_dict=False))


def run(cfg: LoopConfig, sampler=None, log=print) -> list[dict]:
    """Run cfg.steps steps; `sampler` lets a caller share one running vLLM engine across runs."""
    cfg.check()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    model_path = resolve_model(cfg.model)
    env = make_env(cfg.env)
    pool = VerifierPool(env, backend=cfg.verifier_backend, progress=False)  # the step table is the progress
    if sampler is None:
        sampler = make_sampler(cfg.sampler, model_path, max_lora_rank=cfg.lora_rank, seed=cfg.seed,
                               max_model_len=cfg.max_model_len)
    learner = LoRALearner(model_path, LoraSpec(rank=cfg.lora_rank, seed=cfg.seed))
    adam = tinker.AdamParams(learning_rate=cfg.learning_rate, beta1=0.9, beta2=0.95, eps=1e-8)
    params = SamplingParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature)

    version = _new_version(sampler, learner, out, -1)  # v0: the initial adapter (B = 0, same as the base)
    state = env.initial_states()[0]
    prompt_tokens = render_prompt(sampler.get_tokenizer(), env.prompt(state))
    best_reward, records = -math.inf, []
    log(table_header())
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        seeds_G = [cfg.seed * 1_000_003 + step * 1_000 + g for g in range(cfg.groups)]
        groups_G = sampler.sample([prompt_tokens] * cfg.groups, cfg.group_size, params, seeds_P=seeds_G)
        t1 = time.perf_counter()

        rollouts = [seq for group in groups_G for seq in group]
        results = pool.evaluate([seq.text for seq in rollouts], [state] * len(rollouts))
        rewards_G_K = np.array([r.reward for r in results], dtype=np.float64).reshape(cfg.groups, cfg.group_size)
        t2 = time.perf_counter()

        datums, sampler_lps, betas = [], [], []
        for g, group in enumerate(groups_G):
            if np.all(rewards_G_K[g] == rewards_G_K[g, 0]) and (datums or g < cfg.groups - 1):
                continue  # constant group: no signal (the last one is kept if all are, as TTT-Discover does)
            advantages_K, beta = compute_advantages(rewards_G_K[g], cfg.advantage)
            betas.append(beta)
            for seq, advantage in zip(group, advantages_K):
                datums.append(rollout_datum(prompt_tokens, seq.tokens, seq.logprobs, advantage))
                sampler_lps.append(seq.logprobs)
        fb = learner.forward_backward(datums, "importance_sampling")
        deltas = np.concatenate([np.abs(np.array(completion_logprobs(o["logprobs"], len(prompt_tokens))) - lp)
                                 for o, lp in zip(fb["loss_fn_outputs"], sampler_lps)])
        if deltas.max() > cfg.mismatch_threshold:
            raise SamplerMismatch(f"step {step}: sampler and learner logprobs differ by {deltas.max():.2e} "
                                  f"(> {cfg.mismatch_threshold:g}): vLLM is not serving adapter v{version}")
        optim = learner.optim_step(adam)
        t3 = time.perf_counter()

        version = _new_version(sampler, learner, out, version)
        t4 = time.perf_counter()

        rewards = rewards_G_K.ravel()
        best_reward = max(best_reward, float(rewards.max()))
        record = {
            "step": step, "reward_mean": float(rewards.mean()), "reward_max": float(rewards.max()),
            "best_reward": best_reward, "valid_rate": float(np.mean([r.ok for r in results])),
            "adapter_version": rollouts[0].adapter_version, "mismatch_mean": float(deltas.mean()),
            "mismatch_max": float(deltas.max()), "loss": fb["metrics"]["loss:sum"],
            "grad_norm": optim["grad_norm:mean"], "groups_trained": len(betas),
            "beta_mean": float(np.mean(betas)), "tokens_sampled": int(sum(len(s.tokens) for s in rollouts)),
            "tokens_trained": int(sum(d.model_input.length for d in datums)),
            "t_sample": t1 - t0, "t_verify": t2 - t1, "t_train": t3 - t2, "t_swap": t4 - t3,
            "best_construction": _best_construction(results),
        }
        records.append(record)
        append_jsonl(out / "metrics.jsonl", record)
        log(table_row(record))
    plot_curves(records, out / "learning_curve.png", title=f"{cfg.env} on {cfg.model}")
    (out / "config.json").write_text(__import__("json").dumps(asdict(cfg), indent=2))
    pool.close()
    return records


def _new_version(sampler, learner, out: Path, version: int) -> int:
    """Save the learner's adapter as version+1, make the sampler serve it, keep two on disk."""
    new = version + 1
    path = out / "adapters" / f"v{new}"
    learner.save_adapter(str(path))
    sampler.load_adapter(new, str(path))
    shutil.rmtree(out / "adapters" / f"v{new - 2}", ignore_errors=True)
    return new


def _best_construction(results) -> object:
    valid = [r for r in results if r.ok]
    return max(valid, key=lambda r: r.reward).construction if valid else None
