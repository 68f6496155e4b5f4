"""Does test-time RL find better solutions than search alone? Every arm gets the same number of verified samples
on the small discovery tasks (envs/ac1_direct.py, envs/cp_direct.py) with the embedded real model; the result is
the best score found so far against samples drawn (mean and 95% interval over seeds), a plot, and a paired test
of train against each other arm at the final budget.

    .venv/bin/python bench/bench_discovery.py [--tasks ac1_direct,cp_direct] [--seeds 0,1,2,3,4]
        [--arms train,frozen,best_of_n,expert_iteration,hill_climb] [--steps 16] [--groups 4] [--group-size 8]
        [--out bench_runs/discovery] [--record]

Arms (the LM arms are `ttt train +experiment=discovery env=TASK mode=ARM seed=SEED`, configs/experiment/
discovery.yaml: SmolLM2-135M-Instruct, vLLM with merged adapters, temperature 0.9):
- train             entropic adaptive-beta importance-sampling LoRA steps, PUCT state reuse (the method);
- frozen            the same sampling and PUCT reuse, no weight updates (search with the model as proposer);
- best_of_n         no updates and no reuse: every sample starts from the initial state;
- expert_iteration  cross_entropy on the best verified rollout of each group, PUCT reuse;
- hill_climb        no model: random-perturbation hill climbing from the same initial state, one verifier
                    call per sample (envs/hill_climb.py, step 0.1 of the numbers' scale).
Step 0 of the LM arms samples the same tokens (group seeds depend only on seed, step and group), so the arms
differ only in what they do with what they found. Seeds are 0..N-1, never chosen after the fact.

The LM runs share one vLLM engine in this process, one after another. A run dir records the overrides, the
config and the commit that made it (bench_manifest.json): a finished run is reused only when all three match
(re-running the command adds only what is missing), a cut one resumes from its checkpoint, a stale one is
moved aside and run again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from bench.record import commit, record  # noqa: E402

TASKS = ("ac1_direct", "cp_direct")
LM_ARMS = ("train", "frozen", "best_of_n", "expert_iteration")
ARMS = LM_ARMS + ("hill_climb",)


def overrides(task: str, arm: str, seed: int, args, out: Path) -> list[str]:
    return ["+experiment=discovery", f"env={task}", f"mode={arm}", f"seed={seed}", f"steps={args.steps}",
            f"groups={args.groups}", f"group_size={args.group_size}", f"out={out}", "progress=false",
            "wandb_mode=disabled", *args.extra]


def manifest(cfg, over: list[str]) -> dict:
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "resume"}
    return json.loads(json.dumps({"overrides": over, "config": config, "commit": commit()}, default=str))


def run_lm(task: str, arm: str, seed: int, args, sampler_for) -> Path:
    """The run dir of one finished LM run (reused, resumed or run now)."""
    from trainer.config import compose
    from trainer.loop import run

    out = Path(args.out) / task / f"{arm}_seed{seed}"
    over = overrides(task, arm, seed, args, out)
    cfg = compose(over)
    want = manifest(cfg, over)
    path = out / "bench_manifest.json"
    if path.exists() and json.loads(path.read_text()) != want:
        stale = out.with_name(f"{out.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        print(f"[{task} {arm} seed {seed}] made by another config or commit: moved to {stale}", flush=True)
        out.rename(stale)
    if len(_jsonl(out / "metrics.jsonl")) >= args.steps:
        return out
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(want, indent=1))
    if (out / "checkpoints").exists():
        cfg = compose(over + ["resume=true"])
    t0 = time.perf_counter()
    run(cfg, sampler=sampler_for(cfg), log=lambda line: print(f"[{task} {arm} seed {seed}] {line}", flush=True))
    print(f"[{task} {arm} seed {seed}] {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def lm_curve(out: Path, start: float, higher: bool, steps: int) -> np.ndarray:
    """Best score after each step (all of a step's samples are drawn together), starting from `start`."""
    best_by_step = np.full(steps, -np.inf)
    seen = set()
    for r in _jsonl(out / "rollouts.jsonl"):
        if r["status"] != "ok" or r["step"] >= steps or (r["step"], r["index"]) in seen:
            continue
        seen.add((r["step"], r["index"]))
        best_by_step[r["step"]] = max(best_by_step[r["step"]], r["score"] if higher else -r["score"])
    curve = np.maximum.accumulate(np.maximum(best_by_step, start if higher else -start))
    return curve if higher else -curve


def climb_curve(task: str, seed: int, per_step: int, steps: int) -> np.ndarray:
    from envs.hill_climb import hill_climb

    calls = hill_climb(make_task_env(task), per_step * steps, seed)
    return np.array(calls)[per_step - 1::per_step]


def make_task_env(task: str):
    from hydra.utils import instantiate

    from trainer.config import compose

    return instantiate(compose(["+experiment=discovery", f"env={task}"]).env)


def interval(values: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95% t interval over seeds."""
    from scipy import stats

    n = len(values)
    half = stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
    return float(values.mean()), float(half)


def curve_table(curves: dict[str, np.ndarray], per_step: int, every: int) -> str:
    arms = list(curves)
    steps = next(iter(curves.values())).shape[1]
    rows = ["| samples | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for s in sorted(set(range(every - 1, steps, every)) | {0, steps - 1}):
        cells = [f"{m:.4f} +- {h:.4f}" for m, h in (interval(curves[a][:, s]) for a in arms)]
        rows.append(f"| {(s + 1) * per_step} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def paired_table(curves: dict[str, np.ndarray], higher: bool) -> str:
    """train minus each arm at the final budget, signed so that > 0 means train found the better solution."""
    from scipy import stats

    train = curves["train"][:, -1]
    rows = ["| train vs | mean difference (95% CI) | train better / tied / worse | paired t-test p |",
            "|---|---|---|---|"]
    for arm, curve in curves.items():
        if arm == "train":
            continue
        d = (train - curve[:, -1]) * (1 if higher else -1)
        mean, half = interval(d)
        p = stats.ttest_rel(train, curve[:, -1]).pvalue if np.any(d != 0) else 1.0
        rows.append(f"| {arm} | {mean:+.4f} ({mean - half:+.4f} .. {mean + half:+.4f}) | "
                    f"{int((d > 0).sum())} / {int((d == 0).sum())} / {int((d < 0).sum())} | {p:.3g} |")
    return "\n".join(rows)


def diagnosis(runs: dict[str, list[Path]]) -> str:
    """What the learning arms' runs did: signal (mixed groups, beta), policy change (valid rate, mean reward
    first -> last step, grad norm) and where the best stopped improving."""
    rows = ["| arm | mixed groups | beta mean | valid rate step 0 -> last | mean reward step 0 -> last | "
            "grad norm | steps with a new best | last new best at step |", "|---" * 8 + "|"]
    for arm, outs in runs.items():
        metrics = [_jsonl(o / "metrics.jsonl") for o in outs]
        if not metrics or not all(metrics):
            continue

        def mean(key, rows_of=lambda m: m):
            vals = [r.get(key) for m in metrics for r in rows_of(m) if r.get(key) is not None]
            return float(np.mean(vals)) if vals else float("nan")

        def best(r):
            return -math.inf if r.get("best_reward") is None else r["best_reward"]

        improved = [[r["step"] for prev, r in zip(m, m[1:]) if best(r) > best(prev)] for m in metrics]
        rows.append(
            f"| {arm} | {mean('frac_mixed'):.2f} | {mean('beta_mean'):.3g} | "
            f"{mean('valid_rate', lambda m: m[:1]):.2f} -> {mean('valid_rate', lambda m: m[-1:]):.2f} | "
            f"{mean('reward_mean', lambda m: m[:1]):.3f} -> {mean('reward_mean', lambda m: m[-1:]):.3f} | "
            f"{mean('grad_norm'):.3g} | {np.mean([len(i) for i in improved]):.1f} | "
            f"{np.mean([i[-1] if i else 0 for i in improved]):.1f} |")
    return "\n".join(rows)


def plot(all_curves: dict[str, dict[str, np.ndarray]], per_step: int, best_known: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_curves), figsize=(6 * len(all_curves), 4.2), squeeze=False)
    for ax, (task, curves) in zip(axes[0], all_curves.items()):
        for arm, curve in curves.items():
            x = (np.arange(curve.shape[1]) + 1) * per_step
            stats = [interval(curve[:, s]) for s in range(curve.shape[1])]
            mean, half = np.array([m for m, _ in stats]), np.array([h for _, h in stats])
            ax.plot(x, mean, label=arm, lw=2 if arm == "train" else 1.2)
            ax.fill_between(x, mean - half, mean + half, alpha=0.15)
        if best_known.get(task) is not None:
            ax.axhline(best_known[task], color="k", ls=":", lw=1, label="best known")
        ax.set_title(task)
        ax.set_xlabel("samples drawn (verifier calls)")
        ax.set_ylabel("best score so far (mean, 95% CI)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--out", default="bench_runs/discovery")
    parser.add_argument("--record", action="store_true", help="write the tables and the plot into BENCHMARKS.md")
    parser.add_argument("extra", nargs="*", help="more overrides for every LM run (e.g. model=tiny for a smoke run)")
    args = parser.parse_args()
    tasks, arms = [t for t in args.tasks.split(",") if t], [a for a in args.arms.split(",") if a]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if bad := [t for t in tasks if t not in TASKS] + [a for a in arms if a not in ARMS]:
        parser.error(f"unknown tasks or arms {bad}: tasks {', '.join(TASKS)}; arms {', '.join(ARMS)}")
    if "train" not in arms or len(seeds) < 2:
        parser.error("the paired test needs the train arm and at least 2 seeds")

    from inference.models import resolve_model
    from inference.samplers import make_sampler

    samplers: dict[str, object] = {}

    def sampler_for(cfg):  # one engine for every LM run (they share model and engine settings)
        key = json.dumps([cfg.sampler, cfg.base_model, cfg.max_model_len, cfg.lora_rank, cfg.sampler_args],
                         sort_keys=True, default=str)
        if key not in samplers:
            samplers[key] = make_sampler(cfg.sampler, resolve_model(cfg.base_model), max_model_len=cfg.max_model_len,
                                         max_lora_rank=cfg.lora_rank, seed=0, **cfg.sampler_args)
        return samplers[key]

    per_step = args.groups * args.group_size
    t0 = time.perf_counter()
    all_curves, best_known, sections = {}, {}, []
    try:
        for task in tasks:
            env = make_task_env(task)
            start = env.initial_states()[0].score
            best_known[task] = env.best_known
            curves: dict[str, list[np.ndarray]] = {a: [] for a in arms}
            runs: dict[str, list[Path]] = {a: [] for a in arms if a in ("train", "expert_iteration")}
            for seed in seeds:  # seed-major: a cut bench still has every arm for the seeds it finished
                for arm in arms:
                    if arm == "hill_climb":
                        curves[arm].append(climb_curve(task, seed, per_step, args.steps))
                        continue
                    out = run_lm(task, arm, seed, args, sampler_for)
                    curves[arm].append(lm_curve(out, start, env.higher_is_better, args.steps))
                    if arm in runs:
                        runs[arm].append(out)
            stacked = {a: np.stack(c) for a, c in curves.items()}
            all_curves[task] = stacked
            better = "higher" if env.higher_is_better else "lower"
            sections.append(
                f"### {task}: best {env.score_name} so far ({better} is better; start {start:.4f}, best known "
                f"{env.best_known})\n\n{curve_table(stacked, per_step, max(1, args.steps // 4))}\n\n"
                f"Paired by seed at {per_step * args.steps} samples:\n\n{paired_table(stacked, env.higher_is_better)}"
                f"\n\nWhat the learning runs did (means over seeds):\n\n{diagnosis(runs)}")
    finally:
        for sampler in samplers.values():
            sampler.close()
    minutes = (time.perf_counter() - t0) / 60
    png = Path(args.out) / "discovery.png"
    plot(all_curves, per_step, best_known, png)
    command = (f".venv/bin/python bench/bench_discovery.py --tasks {','.join(tasks)} --seeds {args.seeds} "
               f"--arms {','.join(arms)} --steps {args.steps} --groups {args.groups} --group-size {args.group_size}"
               + "".join(f" {e}" for e in args.extra))
    body = (f"{len(seeds)} seeds x {per_step * args.steps} samples per run ({args.steps} steps x {args.groups} groups "
            f"x {args.group_size}); mean +- half-width of the 95% t interval over seeds. This invocation took "
            f"{minutes:.0f} min (runs reused from earlier invocations are not counted).\n\n"
            + "\n\n".join(sections) + "\n\n![best so far vs samples](bench/discovery.png)")
    print(body)
    if args.record:
        shutil.copy(png, Path(__file__).parent / "discovery.png")
        record("discovery", "Discovery: RL vs search on small tasks (bench/bench_discovery.py)", command, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
