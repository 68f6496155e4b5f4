"""Each step's numbers (valid and format rates, frac_mixed, rewards, best-so-far, buffer, beta, tokens, time
split, sampler-learner mismatch) and where they go: metrics.jsonl, wandb (offline unless configured), the best
construction as JSON and as a picture, the curves at the end, progress bars on long phases. How records look
to people (the console table, the curves' PNG) is report.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import uuid
from pathlib import Path

import numpy as np

from envs.base import FORMAT_FAILURES
from trainer.report import append_jsonl, plot_curves


def beta_stats(betas: list[float]) -> dict:
    finite = [b for b in betas if not math.isnan(b)]
    if not finite:
        return {"beta_mean": None, "beta_min": None, "beta_max": None}
    return {"beta_mean": float(np.mean(finite)), "beta_min": float(min(finite)), "beta_max": float(max(finite))}


def staleness_stats(rollouts, version: int) -> dict:
    """How many adapter versions the sampler of each rollout was behind the learner that trains on it
    (pipeline=async: 1 for a step sampled while the previous one trained; sync and stream: 0)."""
    lags = [version - r.version for r in rollouts] or [0]
    return {"staleness_max": int(max(lags)), "staleness_mean": float(np.mean(lags))}


def sampler_learner_deltas(fb, rollouts, only=None) -> np.ndarray:
    """|learner logprob - sampler logprob| over the tokens the sampler chose (mask 1) of every datum (of the
    datums where `only` is true: the learner and the sampler must hold the same version to agree)."""
    deltas = []
    for i, (out, r) in enumerate(zip(fb.loss_fn_outputs, rollouts)):
        if only is not None and not only[i]:
            continue
        learner_T = out["logprobs"].to_numpy()[len(r.prompt_tokens) - 1:]
        chosen = np.asarray(r.mask, bool)
        deltas.append(np.abs(learner_T - np.asarray(r.logprobs))[chosen])
    return np.concatenate(deltas) if deltas else np.zeros(1)


def step_record(step, rollouts, rewards_G_K, buffer, best, version, groups, instance, train_stats, times,
                isolation: str | None = None) -> dict:
    """`isolation`: the sandbox isolation level the step's programs ran under (None: the task runs none)."""
    results = [r.result for r in rollouts]
    statuses = [r.status for r in results]
    rewards = rewards_G_K.ravel()
    record = {
        "step": step, "instance": instance, "groups": groups, "adapter_version": version,
        "valid_rate": float(np.mean([s == "ok" for s in statuses])),
        "format_rate": float(np.mean([s not in FORMAT_FAILURES for s in statuses])),
        "truncated_rate": float(np.mean([s == "truncated" for s in statuses])),
        "frac_mixed": float(np.mean([not np.all(row == row[0]) for row in rewards_G_K])),
        "reward_mean": float(rewards.mean()), "reward_max": float(rewards.max()),
        "best_reward": None if best is None else best["reward"],
        "best_score": None if best is None else best["score"],
        "buffer_size": len(buffer),
        "tokens_sampled": int(sum(len(r.tokens) for r in rollouts)),
        "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        **times,
    }
    record.update({k: v for k, v in train_stats.items() if not k.startswith("_")})
    record.setdefault("tokens_trained", 0)
    if isolation is not None:
        record["sandbox_isolation"] = isolation
    return record


def append_record(out: Path, record: dict) -> None:
    append_jsonl(out / "metrics.jsonl", record)


@contextlib.contextmanager
def progress(show: bool, total: int, desc: str):
    if not show:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


class BestWriter:
    """The best state ever seen: best.json (atomically) at every improvement, and best.png where the env has a
    picture. Drawing costs ~1 s of matplotlib, which early in a run would be paid at nearly every step, so the
    picture is redrawn at most every `picture_every_s` seconds, and by `flush` (at the end) if it lags."""

    def __init__(self, out: Path, env_name: str, picture_every_s: float = 60.0):
        self.out, self.env_name, self.picture_every_s = out, env_name, picture_every_s
        self._drawn_at = -math.inf
        self._pending: tuple | None = None  # (best, env) not drawn yet

    def write(self, best: dict, env) -> None:
        tmp = self.out / "best.json.tmp"
        tmp.write_text(json.dumps(best, default=_plain))
        os.replace(tmp, self.out / "best.json")
        if best.get("construction") is None and not best.get("program"):
            return
        self._pending = (best, env)
        if time.monotonic() - self._drawn_at >= self.picture_every_s:
            self.flush()

    def flush(self) -> None:
        """Draw the latest best if its picture lags."""
        if self._pending is None:
            return
        (best, env), self._pending = self._pending, None
        self._drawn_at = time.monotonic()
        from envs.render import draw_construction, draw_program

        title = f"{self.env_name}: best score {best['score']} (step {best['step']})"
        try:
            if best.get("construction") is None:  # a program task: the program is the result
                draw_program(best["program"], f"{title}{' ' + best['task_id'] if best.get('task_id') else ''}",
                             str(self.out / "best.png"))
            else:
                draw_construction(env, best["construction"], title, str(self.out / "best.png"))
        except Exception:  # noqa: BLE001 - a picture must never stop a run; best.json has the numbers
            pass


def _plain(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON: {type(x).__name__}")


def finish(out: Path, records: list[dict], best: dict | None, env, cfg) -> None:
    if records:
        plot_curves(records, out / "learning_curve.png", title=f"{cfg.env_name} on {cfg.base_model} ({cfg.mode})")


class WandbRun:
    """wandb in offline mode unless configured (files under out/wandb); `disabled` skips it entirely."""

    def __init__(self, cfg, out: Path, resume: bool):
        self.cfg, self.out, self.resume, self.run = cfg, out, resume, None

    def __enter__(self) -> "WandbRun":
        if self.cfg.wandb_mode == "disabled":
            return self
        os.environ.setdefault("WANDB_SILENT", "true")  # the step table is the console output
        import wandb
        from dataclasses import asdict

        id_file = self.out / "wandb_id"
        run_id = id_file.read_text().strip() if self.resume and id_file.exists() else None
        if run_id is None:
            run_id = uuid.uuid4().hex[:8]
            id_file.write_text(run_id)
        try:
            self.run = wandb.init(project=self.cfg.wandb_project, dir=str(self.out), mode=self.cfg.wandb_mode,
                                  id=run_id, resume="allow", config=asdict(self.cfg), name=self.out.name)
        except Exception as e:  # noqa: BLE001 - after a kill -9, wandb may still see the dead run's id "in use"
            if "in use" not in str(e) or not self.resume:
                raise
            run_id = uuid.uuid4().hex[:8]  # continue under a new wandb id; metrics.jsonl stays the record
            id_file.write_text(run_id)
            self.run = wandb.init(project=self.cfg.wandb_project, dir=str(self.out), mode=self.cfg.wandb_mode,
                                  id=run_id, resume="allow", config=asdict(self.cfg), name=self.out.name)
        return self

    def log(self, record: dict) -> None:
        if self.run is not None:
            flat = {k: v for k, v in record.items() if isinstance(v, (int, float)) and v is not None}
            self.run.log(flat, step=record["step"])

    def __exit__(self, *exc) -> None:
        if self.run is not None:
            self.run.finish()
