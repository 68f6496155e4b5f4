"""Sampling throughput through our VLLMSampler vs raw vLLM `LLM.generate` on the same prompts, seeds and
engine (goal >= 0.95x); adapter swap latency from saved adapter to first token served (goal < 0.2 s, tiny
model on CPU), for vLLM and the HF/PEFT path; process memory.

    .venv/bin/python bench/bench_inference.py [--model tiny] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import psutil


def rss_gib(include_children: bool = True) -> float:
    me = psutil.Process()
    procs = [me] + (me.children(recursive=True) if include_children else [])
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**30


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    import torch
    from vllm import SamplingParams as VParams
    from vllm.inputs import TokensPrompt

    from inference.hf_sampler import HFSampler
    from inference.models import resolve_model
    from inference.types import SamplingParams
    from inference.vllm_sampler import VLLMSampler
    from trainer.learner import LoRALearner, LoraSpec

    model_path = resolve_model(args.model)
    t0 = time.perf_counter()
    sampler = VLLMSampler(model_path, max_lora_rank=8, seed=0)
    engine_start_s = time.perf_counter() - t0
    mem_engine = rss_gib()
    tok = sampler.get_tokenizer()
    prompts = [list(tok.apply_chat_template([{"role": "user", "content": f"Write {i + 8} digits."}],
                                            add_generation_prompt=True, tokenize=True, return_dict=False))
               for i in range(args.prompts)]
    seeds = list(range(100, 100 + args.prompts))
    params = SamplingParams(max_tokens=args.max_tokens, seed=0)
    learner = LoRALearner(model_path, LoraSpec(rank=8))
    tmp = tempfile.mkdtemp(prefix="bench_inference_")
    learner.save_adapter(f"{tmp}/v0")
    sampler.load_adapter(0, f"{tmp}/v0")
    lora = sampler._lora(0)

    def ours() -> int:
        groups = sampler.sample(prompts, args.n, params, seeds_P=seeds)
        return sum(len(s.tokens) for g in groups for s in g)

    def raw() -> int:
        vparams = [VParams(n=args.n, max_tokens=args.max_tokens, seed=s, logprobs=0, temperature=1.0)
                   for s in seeds]
        outs = sampler.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], vparams,
                                    lora_request=lora, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs)

    ours(), raw()  # warm-up (first generate compiles the logprob op)
    ours_tps, raw_tps = [], []
    for _ in range(args.rounds):  # interleaved so machine noise hits both alike
        t = time.perf_counter(); n = raw(); raw_tps.append(n / (time.perf_counter() - t))
        t = time.perf_counter(); m = ours(); ours_tps.append(m / (time.perf_counter() - t))
        assert n == m, "same seeds must give the same tokens"

    def swap_latency(s, version: int) -> float:
        with torch.no_grad():
            for name, p in learner.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
        t = time.perf_counter()
        path = f"{tmp}/v{version}"
        learner.save_adapter(path)
        s.load_adapter(version, path)
        s.sample([prompts[0]], 1, SamplingParams(max_tokens=1, seed=0))
        return time.perf_counter() - t

    vllm_swaps = [swap_latency(sampler, v) for v in range(1, 1 + args.rounds)]
    hf = HFSampler(model_path)
    hf_swaps = [swap_latency(hf, v) for v in range(100, 100 + args.rounds)]

    rows = [
        ("raw vLLM generate (baseline)", f"{statistics.median(raw_tps):,.0f} tok/s", "1.00x"),
        ("VLLMSampler.sample", f"{statistics.median(ours_tps):,.0f} tok/s",
         f"{statistics.median(ours_tps) / statistics.median(raw_tps):.2f}x"),
        ("swap -> first token, vLLM", f"{statistics.median(vllm_swaps) * 1e3:.0f} ms median", "goal < 200 ms"),
        ("swap -> first token, HF/PEFT", f"{statistics.median(hf_swaps) * 1e3:.0f} ms median", ""),
        ("engine start (LLM init)", f"{engine_start_s:.1f} s", ""),
        ("RSS after engine start (all procs)", f"{mem_engine:.2f} GiB", ""),
    ]
    print(f"\nbench_inference: model={args.model}, {args.prompts} prompts x n={args.n} x {args.max_tokens} tokens, "
          f"{args.rounds} rounds, {os.cpu_count()} CPUs")
    width = max(len(r[0]) for r in rows)
    for name, value, ratio in rows:
        print(f"{name:<{width}}  {value:>22}  {ratio}")
    sampler.close()


if __name__ == "__main__":
    main()
