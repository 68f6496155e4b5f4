"""SFT then RL on the real task: does a short warm start on a handful of verified programs raise the starting
valid rate of `ttt demo --real`?

    .venv/bin/python bench/bench_sft_warm_start.py [--out bench_runs/sft_warm_start] [--epochs 2] [--write-md]

1. Demonstrations: for each code_basics family, problems 1 and 2 (other parameters, other hidden tests than the
   problem 0 the demo trains on, so no answer leaks), the improvement prompt the loop would show and the
   family's reference program in a ```python block. Each is verified in the sandbox first (reward 1.0) and
   only verified ones are kept.
2. `ttt sft demos.jsonl` (SmolLM2-135M-Instruct, LoRA r16, as demo_real) through the client API.
3. Step 0 of `ttt train +experiment=demo_real` with and without `init_adapter=` (same seed, so the same
   sampling seeds and states): valid rate, format rate and mean reward of the step's 16 rollouts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROOT = Path(__file__).resolve().parent.parent


def demonstrations(path: Path) -> int:
    from envs import code_tasks
    from envs.base import State
    from envs.code_env import CodeEnv
    from trainer.config import compose

    cfg = compose(["+experiment=demo_real"])
    env = CodeEnv(families=list(cfg.env["families"]), problems_per_family=3, seed=cfg.env["seed"],
                  tests_per_problem=cfg.env["tests_per_problem"])
    lines = []
    for family in env.families:
        for index in (1, 2):
            state = State(task_id=f"{family}/{index}")
            program = code_tasks.FAMILIES[family].program(env.problem(state.task_id).params)
            answer = f"```python\n{program}```"
            result = env.evaluate(answer, state)
            if result.ok and result.reward == 1.0:  # only verified programs are demonstrations
                lines.append({"messages": [{"role": "user", "content": env.prompt(state)},
                                           {"role": "assistant", "content": answer}]})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return len(lines)


def step0(out: Path, extra: list[str]) -> dict:
    if not (out / "metrics.jsonl").exists():
        subprocess.run([sys.executable, "-m", "trainer.cli", "train", "+experiment=demo_real", "steps=1",
                        f"out={out}", "wandb_mode=disabled", *extra], check=True, cwd=ROOT)
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_runs/sft_warm_start")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--write-md", action="store_true")
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    n = demonstrations(out / "demos.jsonl")
    t0 = time.perf_counter()
    if not (out / "sft" / "adapter.json").exists():
        subprocess.run([sys.executable, "-m", "trainer.cli", "sft", str(out / "demos.jsonl"), "--out",
                        str(out / "sft"), "base_model=smollm2-135m", "lora_rank=16", f"epochs={args.epochs}",
                        "batch_size=4", f"learning_rate={args.learning_rate}", "learner_args.dtype=float32"],
                       check=True, cwd=ROOT)
    adapter = json.loads((out / "sft" / "adapter.json").read_text())
    sft_s = sum(json.loads(line).get("t_epoch", 0.0) for line in (out / "sft" / "metrics.jsonl").read_text().splitlines()
                if line.strip()) or time.perf_counter() - t0  # the SFT run's own epoch times, also when cached
    base = step0(out / "rl_base", [])
    warm = step0(out / "rl_warm", [f"init_adapter={out / 'sft'}"])
    keys = ("valid_rate", "format_rate", "truncated_rate", "reward_mean", "reward_max")
    rows = ["| start | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, rec in (("base model", base), (f"after SFT ({n} demos, {args.epochs} epochs)", warm)):
        rows.append(f"| {name} | " + " | ".join(f"{rec.get(k, 0):.3f}" for k in keys) + " |")
    body = (f"Command: `.venv/bin/python bench/bench_sft_warm_start.py --epochs {args.epochs}` "
            f"({time.strftime('%Y-%m-%d')}). {n} verified demonstrations (code_basics problems 1-2 of each family; "
            f"the run trains on problem 0), SFT loss per answer token {adapter.get('loss_before', float('nan')):.3f} "
            f"-> {adapter.get('loss_after', float('nan')):.3f} in {sft_s:.0f} s; step 0 of demo_real (16 rollouts, "
            f"seed 0):\n\n" + "\n".join(rows))
    print(body)
    if args.write_md:
        md = ROOT / "BENCHMARKS.md"
        text = md.read_text()
        begin, end = "<!-- sft_warm_start:begin -->", "<!-- sft_warm_start:end -->"
        block = f"{begin}\n{body}\n{end}"
        if begin in text:
            text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
        else:
            text = text.rstrip() + "\n\n## SFT warm start on the real task (bench/bench_sft_warm_start.py)\n\n" + block + "\n"
        md.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
