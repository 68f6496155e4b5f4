"""GPU check for a lent device (issue 13 item 8): the real coder model in bf16 through the HF/PEFT path.

    python bench/gpu_check.py [--model qwen2.5-coder-0.5b] [--device cuda] [--steps 3] [--out runs/gpu_check]

1. Sampling: the HF sampler draws 8 x 256 tokens for one code_basics prompt; tokens/s.
2. Learner: one LoRA r16 forward_backward + optim_step over 16 sequences of 512 tokens; tokens/s and MFU
   (6 x parameters x tokens / time / peak bf16 FLOP/s of the device, from --peak-tflops or a table).
3. The loop: `ttt train +experiment=demo_real model=... sampler=hf steps=3` in bf16 on the device.
Prints one JSON line with the figures, the device name and peak memory; with --write-md the same as a table
row under "GPU check" in BENCHMARKS.md. On a CPU (`--device cpu --model tiny`) it runs as a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}  # dense, no sparsity


def peak_tflops(name: str, given: float | None) -> float | None:
    if given:
        return given
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--out", default="runs/gpu_check")
    p.add_argument("--write-md", action="store_true")
    args = p.parse_args()

    import tinker
    import torch

    from envs.base import State
    from envs.code_env import CodeEnv
    from inference.hf_sampler import HFSampler
    from inference.models import resolve_model
    from inference.types import SamplingParams
    from trainer.learner import LoRALearner, LoraSpec

    path = resolve_model(args.model)
    cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    dtype = getattr(torch, args.dtype)
    figures: dict = {"device": device_name, "model": args.model, "dtype": args.dtype}

    sampler = HFSampler(path, dtype=dtype, device=args.device, max_model_len=4096)
    tok = sampler.get_tokenizer()
    env = CodeEnv(families=["unique_sorted"], problems_per_family=1)
    prompt = tok.apply_chat_template([{"role": "user", "content": env.prompt(State(task_id="unique_sorted/0"))}],
                                     add_generation_prompt=True, tokenize=True, return_dict=False)
    sampler.sample([prompt], 2, SamplingParams(max_tokens=8, temperature=1.0, seed=0))  # warm-up
    t0 = time.perf_counter()
    seqs = sampler.sample([prompt], 8, SamplingParams(max_tokens=256, temperature=1.0, seed=1))[0]
    if cuda:
        torch.cuda.synchronize()
    figures["sample_tok_s"] = round(sum(len(s.tokens) for s in seqs) / (time.perf_counter() - t0), 1)
    del sampler

    learner = LoRALearner(path, LoraSpec(rank=16, seed=0), dtype=dtype, device=args.device)
    n_params = sum(p.numel() for p in learner.model.parameters())
    g = torch.Generator().manual_seed(0)
    data = []
    for k in range(16):
        tokens = torch.randint(100, min(30000, learner.vocab_size), (513,), generator=g).tolist()
        data.append(tinker.Datum(model_input=tinker.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs={
            "target_tokens": tokens[1:], "logprobs": [0.0] * 512, "advantages": [float(k % 3 - 1)] * 512}))
    learner.forward_backward(data[:2], "importance_sampling")  # warm-up
    learner.optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    learner.forward_backward(data, "importance_sampling")
    learner.optim_step(tinker.AdamParams(learning_rate=1e-5))
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens = 16 * 512
    figures["learner_tok_s"] = round(tokens / seconds, 1)
    peak = peak_tflops(device_name, args.peak_tflops)
    figures["mfu"] = round(6 * n_params * tokens / seconds / (peak * 1e12), 4) if peak else None
    if cuda:
        figures["learner_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    del learner

    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "trainer.cli", "train", "+experiment=demo_real", f"base_model={args.model}",
           f"out={args.out}", f"steps={args.steps}", "sampler=hf", "wandb_mode=disabled",
           f"sampler_args.dtype={args.dtype}", f"learner_args.dtype={args.dtype}", f"sampler_args.device={args.device}",
           f"learner_args.device={args.device}", "mismatch_threshold=0.1", "on_mismatch=warn"]
    rc = subprocess.call(cmd)
    figures["loop_rc"], figures["loop_s"] = rc, round(time.perf_counter() - t0, 1)
    metrics = os.path.join(args.out, "metrics.jsonl")
    if os.path.exists(metrics):
        rows = [json.loads(line) for line in open(metrics)]
        figures["loop_reward_mean"] = [round(r["reward_mean"], 3) for r in rows]
        figures["loop_t_sample_train"] = [(round(r["t_sample"], 1), round(r["t_train"], 1)) for r in rows]
    print(json.dumps(figures))
    if args.write_md:
        md = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "BENCHMARKS.md")
        with open(md, "a") as f:
            f.write(f"\n### GPU check ({time.strftime('%Y-%m-%d')}, `bench/gpu_check.py`)\n\n```json\n"
                    f"{json.dumps(figures, indent=1)}\n```\n")
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
