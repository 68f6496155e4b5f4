"""Sampling speed of the real demo's workload on this machine: the HF/PEFT sampler against vLLM serving the
adapter merged into its weights (adapter_mode=merged) and through its LoRA kernels (adapter_mode=lora), side by
side in one run, with the machine's bound and our fraction of it; adapter swap latency; our layer's overhead
over raw `LLM.generate`.

    .venv/bin/python bench/bench_inference.py [--model smollm2-135m] [--rounds 3] [--workloads code,discovery]
        [--samplers hf,vllm_merged,vllm_lora] [--record]

Workloads (the prompts and lengths the demos sample, 2 prompts x 8 samples = 16 sequences, fp32):
- code:      `ttt demo --real --task code` (code_basics prompts, up to 160 tokens, temperature 0.7, stop at the
             code block's closing fence): the workload of the issue that set the >= 5x goal;
- discovery: `ttt demo --real` (ac1_direct prompts, up to 96 tokens, temperature 0.9, stop at "]").
Every sampler serves the same non-trivial adapter (B ~ N(0, 0.02): the adapter's cost is in the measurement)
and draws with the same seeds; rounds are interleaved so that machine noise hits every sampler alike; tok/s
counts the sampled tokens of a round over its wall time (prefill included), median over rounds.

The bound: a decode step of R rows reads every weight once (bytes = 4 x parameters, fp32) and does 2 x
parameters x R FLOPs; with the memory bandwidth (a 1 GiB tensor read, this process) and the fp32 matmul peak
(a 2048^3 GEMM with torch's threads) measured here, a step takes at least max(bytes / bandwidth, FLOPs / peak),
so R rows give at most R / that tok/s. Prefill, sampling and the rows that finished early are extra work.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

WORKLOADS = {  # the experiment whose env, max_tokens, temperature and stop strings a workload takes
    "code": dict(overrides=["+experiment=demo_real_code"]),
    "discovery": dict(overrides=["+experiment=demo_real"]),
}
SAMPLERS = ("hf", "vllm_merged", "vllm_lora")


def bandwidth_gbs() -> float:
    import torch

    x = torch.ones(2**28)  # 1 GiB of fp32
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best / 1e9


def matmul_gflops() -> float:
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 2048**3 / best / 1e9


def workload(name: str, tokenizer):
    """(prompts, SamplingParams, seeds) for one demo: its env's initial-state prompts, as the loop renders them."""
    from hydra.utils import instantiate

    from inference.types import SamplingParams
    from trainer.config import compose
    from trainer.rollouts import state_prompt

    cfg = compose(WORKLOADS[name]["overrides"])
    env = instantiate(cfg.env)
    states = env.initial_states()
    prompts = [state_prompt(tokenizer, env, states[i % len(states)], cfg.chat_template_kwargs) for i in range(2)]
    params = SamplingParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature, stop=list(cfg.stop) or None)
    return cfg, prompts, params


def make(kind: str, model_path: str):
    from inference.hf_sampler import HFSampler
    from inference.vllm_sampler import VLLMSampler

    if kind == "hf":
        return HFSampler(model_path, max_model_len=2048)
    return VLLMSampler(model_path, adapter_mode=kind.split("_")[1], max_model_len=2048, max_lora_rank=16,
                       kv_cache_memory_bytes=512 * 2**20, seed=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--record", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args()
    workloads = [w for w in args.workloads.split(",") if w]
    kinds = [k for k in args.samplers.split(",") if k]
    if bad := [w for w in workloads if w not in WORKLOADS] + [k for k in kinds if k not in SAMPLERS]:
        parser.error(f"unknown workloads or samplers {bad}: workloads {', '.join(WORKLOADS)}; samplers "
                     f"{', '.join(SAMPLERS)}")

    import torch

    from inference.models import resolve_model
    from trainer.learner import LoRALearner, LoraSpec

    model_path = resolve_model(args.model)
    bw, peak = bandwidth_gbs(), matmul_gflops()
    learner = LoRALearner(model_path, LoraSpec(rank=16, seed=0))
    params_n = sum(p.numel() for n, p in learner.model.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        for name, p in learner.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    adapter = tempfile.mkdtemp(prefix="bench_inference_") + "/adapter"
    learner.save_adapter(adapter)
    del learner

    samplers, start_s, swap_ms = {}, {}, {}
    for kind in kinds:
        t = time.perf_counter()
        samplers[kind] = make(kind, model_path)
        start_s[kind] = time.perf_counter() - t
        swaps = []
        for version in range(1, 4):
            t = time.perf_counter()
            samplers[kind].load_adapter(version, adapter)
            swaps.append(time.perf_counter() - t)
        swap_ms[kind] = statistics.median(swaps) * 1e3
        print(f"{kind}: started in {start_s[kind]:.0f} s, adapter load {swap_ms[kind]:.0f} ms", flush=True)

    tokenizer = samplers[kinds[0]].get_tokenizer()
    rows, lengths = [], {}
    for name in workloads:
        cfg, prompts, params = workload(name, tokenizer)
        tps = {k: [] for k in kinds}
        for r in range(args.rounds + 1):  # round 0 warms up every path
            seeds = [1000 * r + 1, 1000 * r + 501]
            for kind in kinds:
                t = time.perf_counter()
                groups = samplers[kind].sample(prompts, 8, params, seeds_P=seeds)
                dt = time.perf_counter() - t
                n = sum(len(s.tokens) for g in groups for s in g)
                if r:
                    tps[kind].append(n / dt)
                    lengths.setdefault(name, []).extend(len(s.tokens) for g in groups for s in g)
            print(f"{name} round {r}: " + ", ".join(f"{k} {tps[k][-1]:.0f} tok/s" for k in kinds if tps[k]),
                  flush=True)
        step_s = max(4 * params_n / (bw * 1e9), 2 * params_n * 16 / (peak * 1e9))
        bound = 16 / step_s
        base = statistics.median(tps["hf"]) if "hf" in tps else None
        for kind in kinds:
            median = statistics.median(tps[kind])
            rows.append(f"| {name} | {kind} | {median:,.0f} | {median / base:.2f}x | {median / bound:.0%} |"
                        if base else f"| {name} | {kind} | {median:,.0f} | - | {median / bound:.0%} |")
        rows.append(f"| {name} | bound at 16 rows | {bound:,.0f} | | 100% |")
    for sampler in samplers.values():
        sampler.close()

    table = ("| workload | sampler | tok/s (median) | vs hf | of the bound |\n|---|---|---|---|---|\n" + "\n".join(rows))
    mean_len = {w: statistics.mean(v) for w, v in lengths.items()}
    body = (f"Model {args.model} fp32 ({params_n / 1e6:.1f} M parameters), 16 sequences per call (2 prompts x 8), "
            f"{args.rounds} interleaved rounds; mean sequence length "
            + ", ".join(f"{w} {v:.0f} tokens" for w, v in mean_len.items())
            + f". Measured here: memory bandwidth {bw:.1f} GB/s, fp32 GEMM peak {peak:.0f} GFLOP/s, so a decode "
            f"step of 16 rows takes >= {max(4 * params_n / (bw * 1e9), 2 * params_n * 16 / (peak * 1e9)) * 1e3:.0f} "
            f"ms (the bound row).\n\n{table}\n\n| sampler | engine start | adapter load (median of 3) |\n|---|---|---|\n"
            + "\n".join(f"| {k} | {start_s[k]:.0f} s | {swap_ms[k]:.0f} ms |" for k in kinds))
    print(body)
    if args.record:
        from bench.record import record

        command = (f".venv/bin/python bench/bench_inference.py --model {args.model} --rounds {args.rounds} "
                   f"--workloads {','.join(workloads)} --samplers {','.join(kinds)}")
        record("inference", "Inference: the demo's sampling workload (bench/bench_inference.py)", command, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
