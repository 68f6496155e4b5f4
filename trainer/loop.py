"""The RL loop, top to bottom: sample groups with adapter v -> verify on Ray -> entropic advantages ->
importance-sampling step -> save adapter v+1 -> hot-swap it into vLLM -> next step samples with v+1.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tinker

from envs.base import State
from envs.pool import VerifierPool
from inference.models import resolve_model
from inference.samplers import make_sampler
from inference.two_phase import DEFAULT_PREFILL, sample_two_phase
from inference.types import SamplingParams
from trainer.advantages import compute_advantages
from trainer.datums import completion_logprobs, rollout_datum
from envs.registry import make_env
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
    sampler: str = "vllm"  # vllm (in-process) | server (vLLM OpenAI servers) | hf (HF/PEFT, no vLLM)
    server_urls: list[str] = field(default_factory=list)  # sampler=server: use these, else start num_servers
    num_servers: int = 1
    sampler_args: dict = field(default_factory=dict)  # passed to the engine unchanged (e.g. vLLM LLM kwargs)
    verifier_backend: str = "ray"
    max_model_len: int = 512
    # fp32 vLLM and the learner agree to ~3e-6; beyond this the sampler is not serving what we trained
    thinking_budget: int = 0  # > 0: two-phase sampling, then a forced final answer of final_budget tokens
    final_budget: int = 64
    prefill_text: str = DEFAULT_PREFILL
    mismatch_threshold: float = 1e-3
    on_mismatch: str = "stop"  # stop | warn

    def check(self) -> None:
        for name in ("steps", "groups", "group_size", "max_tokens", "lora_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.on_mismatch not in ("stop", "warn"):
            raise ValueError(f"on_mismatch must be 'stop' or 'warn', got {self.on_mismatch!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


class SamplerMismatch(RuntimeError):
    pass


PROBE_TEXT = "0123456789 circle packing 2.635"


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
    owns_sampler = sampler is None
    if owns_sampler:
        sampler = make_sampler(cfg.sampler, model_path, server_urls=cfg.server_urls, num_servers=cfg.num_servers,
                               log_dir=str(out), **{"max_lora_rank": cfg.lora_rank, "seed": cfg.seed,
                                                    "max_model_len": cfg.max_model_len, **cfg.sampler_args})
    try:
        return _run(cfg, out, env, pool, sampler, model_path, log)
    finally:
        pool.close()
        if owns_sampler:
            sampler.close()


def _run(cfg: LoopConfig, out: Path, env, pool, sampler, model_path: str, log) -> list[dict]:
    learner = LoRALearner(model_path, LoraSpec(rank=cfg.lora_rank, seed=cfg.seed))
    adam = tinker.AdamParams(learning_rate=cfg.learning_rate, beta1=0.9, beta2=0.95, eps=1e-8)
    params = SamplingParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature)

    state = env.initial_states()[0]
    prompt_tokens = render_prompt(sampler.get_tokenizer(), env.prompt(state))
    probe_tokens = prompt_tokens + sampler.get_tokenizer().encode(PROBE_TEXT)
    prefill_tokens = sampler.get_tokenizer().encode(cfg.prefill_text)
    version, _ = _new_version(cfg, sampler, learner, out, -1, probe_tokens, log)  # v0: B = 0, same as base
    best_reward, records = -math.inf, []
    log(table_header())
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        seeds_G = [cfg.seed * 1_000_003 + step * 1_000 + g for g in range(cfg.groups)]
        if cfg.thinking_budget > 0:
            groups_G = sample_two_phase(sampler, [prompt_tokens] * cfg.groups, cfg.group_size, params,
                                        thinking_budget=cfg.thinking_budget, final_budget=cfg.final_budget,
                                        prefill_tokens=prefill_tokens, seeds_P=seeds_G)
        else:
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
                datums.append(rollout_datum(prompt_tokens, seq.tokens, seq.logprobs, advantage, seq.mask))
                sampler_lps.append((np.array(seq.logprobs), np.array(seq.mask or [1] * len(seq.tokens), bool)))
        fb = learner.forward_backward(datums, "importance_sampling")
        deltas = np.concatenate([  # only the tokens the sampler chose; forced prefill tokens have no logprob
            np.abs(np.array(completion_logprobs(o["logprobs"], len(prompt_tokens))) - lp)[chosen]
            for o, (lp, chosen) in zip(fb["loss_fn_outputs"], sampler_lps)])
        _check_serving(cfg, float(deltas.max()), f"step {step}: sampler and learner logprobs", version, log)
        optim = learner.optim_step(adam)
        t3 = time.perf_counter()

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
            "t_sample": t1 - t0, "t_verify": t2 - t1, "t_train": t3 - t2,
            "best_construction": _best_construction(results),
        }
        try:  # the step's record is written even if the new adapter fails its proof of serving
            version, record["probe_mismatch"] = _new_version(cfg, sampler, learner, out, version, probe_tokens, log)
        finally:
            record["t_swap"] = time.perf_counter() - t3
            records.append(record)
            append_jsonl(out / "metrics.jsonl", record)
            log(table_row(record))
    plot_curves(records, out / "learning_curve.png", title=f"{cfg.env} on {cfg.model}")
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    return records


def _check_serving(cfg: LoopConfig, delta: float, what: str, version: int, log) -> None:
    """The proof that the sampler serves the adapter we trained: stop (or warn) beyond the threshold."""
    if delta <= cfg.mismatch_threshold:
        return
    message = (f"{what} differ by {delta:.2e} (> {cfg.mismatch_threshold:g}): "
               f"the sampler is not serving adapter v{version}")
    if cfg.on_mismatch == "stop":
        raise SamplerMismatch(message)
    log(f"warning: {message}")


def _new_version(cfg, sampler, learner, out: Path, version: int, probe_tokens: list[int], log):
    """Save the learner's adapter as version+1, make the sampler serve it, prove it on a fixed probe;
    keep two adapters on disk. Returns (new version, probe |delta logprob| max)."""
    new = version + 1
    path = out / "adapters" / f"v{new}"
    learner.save_adapter(str(path))
    sampler.load_adapter(new, str(path))
    served = np.array(sampler.compute_logprobs(probe_tokens, version=new)[1:], dtype=np.float64)
    probe = tinker.Datum(model_input=tinker.ModelInput.from_ints(probe_tokens[:-1]), loss_fn_inputs={
        "target_tokens": probe_tokens[1:], "weights": [0.0] * (len(probe_tokens) - 1)})
    trained = learner.forward_backward([probe], "cross_entropy", forward_only=True)["loss_fn_outputs"][0]["logprobs"]
    delta = float(np.abs(served - trained.numpy()).max())
    _check_serving(cfg, delta, f"after swapping to v{new}, probe logprobs of sampler and learner", new, log)
    shutil.rmtree(out / "adapters" / f"v{new - 2}", ignore_errors=True)
    return new, delta


def _best_construction(results) -> object:
    valid = [r for r in results if r.ok]
    return max(valid, key=lambda r: r.reward).construction if valid else None
