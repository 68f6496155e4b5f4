"""Offline evaluation of a saved adapter (or the base model): sample N, verify in the same sandbox and pool
as training, report best / mean / valid rate, keep every rollout, draw the best construction.

    ttt eval checkpoint=runs/demo n=64                 # a run dir: its latest checkpoint, env and model
    ttt eval checkpoint=runs/demo/checkpoints/step_000005
    ttt eval checkpoint=path/to/peft_adapter env=toy_digits

For a run checkpoint the run's best state is also verified again from its text (`run_best`), so the report
shows the best the run found next to what the adapter samples now.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from envs.base import State
from envs.pool import VerifierPool
from envs.registry import make_env
from inference.models import resolve_model
from inference.samplers import make_sampler
from inference.types import SamplingParams
from trainer.rollouts import render_prompt
from trainer.report import append_jsonl


@dataclass
class EvalConfig:
    checkpoint: str | None = None  # a PEFT adapter dir (e.g. a run's adapters/vN); None = the base model
    model: str = "tiny"
    env: str = "toy_digits"
    env_args: dict = field(default_factory=dict)
    n: int = 64
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    sampler: str = "vllm"
    verifier_backend: str = "ray"
    sandbox_isolation: str = "strict"  # as in training (envs/sandbox/isolation.py); weaker levels only by name
    max_model_len: int = 512
    out: str = "runs/eval"

    def check(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        from envs.sandbox.isolation import check_name

        check_name(self.sandbox_isolation)
        if self.checkpoint is not None and not _is_run(self.checkpoint) and not (
                Path(self.checkpoint) / "adapter_config.json").is_file():
            raise ValueError(f"checkpoint {self.checkpoint} is neither a run checkpoint nor a PEFT adapter dir: "
                             "pass a run dir, one of its checkpoints/step_NNNNNN dirs, an adapter dir, or omit "
                             "checkpoint for the base model")


def _is_run(path: str) -> bool:
    p = Path(path)
    return (p / "loop_state.json").is_file() or (p / "checkpoints" / "latest").is_file()


def _from_run(cfg: EvalConfig):
    """(env, model, adapter dir, the run's best) of a run checkpoint; env and model as the run had them."""
    from hydra.utils import instantiate

    from trainer.checkpoint import read_checkpoint

    state = read_checkpoint(cfg.checkpoint)
    best = state.get("best")
    overrides = state["curriculum_overrides"][best["instance"]] if best and state["curriculum_overrides"] else {}
    env = instantiate({**state["env"], **overrides})
    if not state.get("local_training_dir"):
        raise ValueError(f"{cfg.checkpoint} was trained on the tinker backend: its weights are at "
                         f"{state['training_state']}; evaluate them there")
    return env, state["base_model"], str(Path(state["local_training_dir"]) / "adapter"), best


def _adapter_rank(checkpoint: str) -> int:
    return int(json.loads((Path(checkpoint) / "adapter_config.json").read_text())["r"])


def evaluate(cfg: EvalConfig, sampler=None) -> dict:
    cfg.check()
    run_best, adapter, model = None, cfg.checkpoint, cfg.model
    if cfg.checkpoint is not None and _is_run(cfg.checkpoint):
        env, model, adapter, run_best = _from_run(cfg)
    else:
        env = make_env(cfg.env, **cfg.env_args)
    model_path = resolve_model(model)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # before the model loads: a host that cannot keep the sandbox isolation level refuses at once, in one line
    pool = VerifierPool(env, backend=cfg.verifier_backend, isolation=cfg.sandbox_isolation)
    owns_sampler = sampler is None
    if owns_sampler:
        rank = _adapter_rank(adapter) if adapter else 8
        sampler = make_sampler(cfg.sampler, model_path, log_dir=str(out), max_lora_rank=rank, seed=cfg.seed,
                               max_model_len=cfg.max_model_len)
    try:
        version = None
        if adapter:
            version = 10**6  # a version id no training run uses, so a shared engine never confuses the two
            sampler.load_adapter(version, str(Path(adapter).resolve()))
        state = env.initial_states()[0]
        prompt = render_prompt(sampler.get_tokenizer(), env.prompt(state))
        t0 = time.perf_counter()
        params = SamplingParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
        seqs = sampler.sample([prompt], cfg.n, params, seeds_P=[cfg.seed], version=version)[0]
        results = pool.evaluate([s.text for s in seqs], [state] * len(seqs))
        wall = time.perf_counter() - t0
        if run_best is not None:  # verified again, from its text and parent state, not trusted from the log
            again = pool.evaluate([run_best["text"]], [State.from_dict(run_best["parent_state"])])[0]
            run_best = {"reward": again.reward, "score": again.score, "status": again.status,
                        "logged_reward": run_best["reward"], "step": run_best["step"]}
    finally:
        pool.close()
        if owns_sampler:
            sampler.close()

    rollouts_path = out / "rollouts.jsonl"
    rollouts_path.unlink(missing_ok=True)
    for seq, r in zip(seqs, results):
        append_jsonl(rollouts_path, {"text": seq.text, "status": r.status, "reward": r.reward, "score": r.score,
                                     "message": r.message, "construction": r.construction})
    rewards = np.array([r.reward for r in results])
    valid = [r for r in results if r.ok]
    best = max(valid, key=lambda r: r.reward) if valid else None
    summary = {
        "checkpoint": cfg.checkpoint, "adapter": adapter, "env": getattr(env, "name", cfg.env), "n": cfg.n,
        "run_best": run_best, "reward_mean": float(rewards.mean()),
        "reward_best": float(rewards.max()), "valid_rate": len(valid) / len(results),
        "best_score": None if best is None else best.score,
        "best_construction": None if best is None else best.construction, "wall_s": wall,
        "statuses": {s: sum(r.status == s for r in results) for s in sorted({r.status for r in results})},
        "sandbox_isolation": pool.isolation,  # None: the task runs no program
        "config": asdict(cfg),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if best is not None:
        from envs.render import draw_construction

        try:
            draw_construction(env, best.construction, f"{summary['env']}: best score {best.score}",
                              str(out / "best.png"))
        except ValueError as e:  # nothing to draw for this env: the numbers are still reported
            summary["render"] = str(e)
    return summary
