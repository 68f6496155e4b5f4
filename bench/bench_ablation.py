"""How much does RL add beyond search? The same run in four modes, same seeds, same sample budget, same
state sampler, on a real pretrained model and a real program-writing task; a table and a PNG of the curves.

    .venv/bin/python bench/bench_ablation.py [--seeds 0,1,2] [--steps 6] [--out bench_runs/ablation]
                                             [--modes train,frozen,best_of_n,expert_iteration] [--write-md]

Every run is `ttt demo --real`'s experiment (configs/experiment/demo_real.yaml: SmolLM2-135M-Instruct writes
Python functions scored by the fraction of hidden tests passed, env code_basics) with mode=MODE seed=SEED:
- train             entropic adaptive-beta importance-sampling LoRA steps, PUCT state reuse (the method);
- frozen            the same sampling and PUCT reuse, no weight updates (search alone);
- best_of_n         no updates and no reuse: every step samples fresh from the initial states;
- expert_iteration  cross_entropy on the best verified rollout of each group, PUCT reuse.
Step 0 samples the same tokens in every mode (group seeds depend only on seed, step and group).

All runs share one sampler engine in this process (the runs go one after another). A run that was cut
resumes from its checkpoint; a finished one is read back, so re-running the command only adds what is
missing. The table: per step, mean +- standard deviation over seeds of the best reward so far and of the
valid rate; the PNG: the same curves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODES = ("train", "frozen", "best_of_n", "expert_iteration")
MD_BEGIN, MD_END = "<!-- ablation:begin -->", "<!-- ablation:end -->"


def _records(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run_one(mode: str, seed: int, args, sampler) -> list[dict]:
    from trainer.config import compose
    from trainer.loop import run

    out = Path(args.out) / f"{mode}_seed{seed}"
    done = _records(out)
    if len(done) >= args.steps:
        return done[: args.steps]
    overrides = ["+experiment=demo_real", f"mode={mode}", f"seed={seed}", f"steps={args.steps}", f"out={out}",
                 "progress=false", "wandb_mode=disabled", f"groups={args.groups}", f"group_size={args.group_size}"]
    cfg = compose(overrides + (["resume=true"] if (out / "checkpoints").exists() else []))
    t0 = time.perf_counter()
    run(cfg, sampler=sampler, log=lambda line: print(f"[{mode} seed {seed}] {line}", flush=True))
    print(f"[{mode} seed {seed}] {time.perf_counter() - t0:.0f} s", flush=True)
    return _records(out)[: args.steps]


def curves(records: list[dict]) -> dict[str, np.ndarray]:
    best = np.maximum.accumulate([r["best_reward"] if r["best_reward"] is not None else 0.0 for r in records])
    return {"best": best, "valid": np.array([r["valid_rate"] for r in records]),
            "reward": np.array([r["reward_mean"] for r in records])}


def table(results: dict[str, list[dict[str, np.ndarray]]], steps: int) -> str:
    def cell(values: np.ndarray) -> str:
        return f"{values.mean():.3f} +- {values.std():.3f}"

    lines = ["| step | " + " | ".join(f"{m}: best so far | {m}: valid rate" for m in results) + " |",
             "|---|" + "---|---|" * len(results)]
    for t in range(steps):
        row = []
        for runs in results.values():
            row += [cell(np.array([c["best"][t] for c in runs])), cell(np.array([c["valid"][t] for c in runs]))]
        lines.append(f"| {t} | " + " | ".join(row) + " |")
    final = ["| mean reward, last step | " + " | ".join(
        f"{cell(np.array([c['reward'][-1] for c in runs]))} | -" for runs in results.values()) + " |"]
    return "\n".join(lines + final)


def plot(results: dict[str, list[dict[str, np.ndarray]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for mode, runs in results.items():
        for ax, key, label in zip(axes, ("best", "valid", "reward"), ("best reward so far", "valid rate",
                                                                      "mean reward")):
            values = np.array([c[key] for c in runs])
            steps = np.arange(values.shape[1])
            ax.plot(steps, values.mean(0), label=mode)
            ax.fill_between(steps, values.min(0), values.max(0), alpha=0.15)
            ax.set_xlabel("step"), ax.set_title(label)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_markdown(md_path: Path, body: str) -> None:
    text = md_path.read_text() if md_path.exists() else ""
    block = f"{MD_BEGIN}\n{body}\n{MD_END}"
    if MD_BEGIN in text and MD_END in text:
        text = text[: text.index(MD_BEGIN)] + block + text[text.index(MD_END) + len(MD_END):]
    else:
        text = text.rstrip() + "\n\n## Ablation: RL vs search on a real model (bench/bench_ablation.py)\n\n" + block + "\n"
    md_path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=6)
    parser.add_argument("--out", default="bench_runs/ablation")
    parser.add_argument("--write-md", action="store_true", help="put the table and PNG into BENCHMARKS.md")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if unknown := [m for m in modes if m not in MODES]:
        parser.error(f"unknown modes {unknown}; choose from {', '.join(MODES)}")

    from inference.models import resolve_model
    from inference.samplers import make_sampler
    from trainer.config import compose

    cfg = compose(["+experiment=demo_real"])
    t0 = time.perf_counter()
    sampler = make_sampler(cfg.sampler, resolve_model(cfg.base_model), max_model_len=cfg.max_model_len,
                           max_lora_rank=cfg.lora_rank, seed=0, **cfg.sampler_args)
    print(f"sampler {cfg.sampler} for {cfg.base_model} ready in {time.perf_counter() - t0:.0f} s", flush=True)
    results: dict[str, list[dict[str, np.ndarray]]] = {m: [] for m in modes}
    step_seconds = 0.0  # the runs' own step times, also for runs finished by an earlier invocation
    for seed in seeds:  # seed-major: a run cut short still has every mode for the seeds it finished
        for mode in modes:
            records = run_one(mode, seed, args, sampler)
            step_seconds += sum(sum(r.get(k) or 0.0 for k in ("t_sample", "t_verify", "t_buffer", "t_train",
                                                                "t_swap", "t_checkpoint")) for r in records)
            results[mode].append(curves(records))
    minutes = step_seconds / 60
    out = Path(args.out)
    plot(results, out / "ablation.png")
    body = (f"Command: `.venv/bin/python bench/bench_ablation.py --seeds {args.seeds} --steps {args.steps} "
            f"--groups {args.groups} --group-size {args.group_size} --modes {','.join(modes)}` "
            f"({time.strftime('%Y-%m-%d')}; the runs' steps took {minutes:.0f} min in all on this machine, shared "
            f"with other jobs). Model {cfg.base_model}, env "
            f"{cfg.env_name} ({', '.join(cfg.env.get('families') or [])}), {args.groups} groups x {args.group_size} "
            f"samples per step, max_tokens {cfg.max_tokens}, temperature {cfg.temperature}, seeds {seeds}; "
            f"mean +- std over seeds.\n\n{table(results, args.steps)}\n\n![ablation curves](bench/ablation.png)")
    print(body)
    if args.write_md:
        import shutil

        shutil.copy(out / "ablation.png", Path(__file__).parent / "ablation.png")
        write_markdown(Path(__file__).parent.parent / "BENCHMARKS.md", body)
    sampler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
