"""Learner throughput: tokens/s, step time and peak memory of forward_backward + optim_step, each variant against
a baseline measured in the same run.

    .venv/bin/python bench/bench_learner.py                      # CPU: tiny model and the 26M model
    .venv/bin/python bench/bench_learner.py --device cuda        # GPU: Qwen3-4B-shaped model, LoRA r16/r32

CPU: one importance-sampling step over datums of mixed lengths, four ways: one datum per forward pass (the
baseline), padded micro-batches, packed (padding-free) micro-batches, packed + gradient checkpointing.
Variants run interleaved round by round so that load drift on a shared machine hits all of them alike.
Peak memory is the highest RSS seen during a step minus the RSS before it (activations and temporaries),
sampled every 2 ms; glibc's malloc_trim runs before each step so that memory freed by the previous step is
not silently reused without showing up in RSS.

GPU: random-weight Qwen3-4B shape (hidden 2560, 36 layers, 32/8 heads, vocab 151936), bf16, packed sequences
of 2048 tokens, gradient checkpointing, 16k and 64k tokens per step, LoRA r16 and r32 on all linear layers.
MFU counts model FLOPs only (no recomputation): per token 2 * (forward + activation-gradient backward) *
(2 * linear params + causal attention 2 * layers * seq * q_dim); frozen weights need no weight gradient.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tinker  # noqa: E402
import torch  # noqa: E402

from trainer.learner import LoRALearner, LoraSpec  # noqa: E402

ADAM = tinker.AdamParams(learning_rate=1e-4)
SHAPES = {  # (hidden, intermediate, layers, heads, kv heads, vocab); the tiny model is loaded from its dir
    "26M": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=2, vocab_size=2048),
    "Qwen3-4B": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
}
PEAK_BF16_FLOPS = 989e12  # H100 / H200 SXM dense bf16


def build_model(shape: str, device: str, dtype: torch.dtype, attn_implementation: str = "sdpa", seed: int = 0):
    """Random weights built here, never downloaded (the 26M model is PLATFORM.md's scaling model)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    if shape == "Qwen3-4B":
        config, cls = Qwen3Config(**SHAPES[shape], max_position_embeddings=65536), Qwen3ForCausalLM
    else:
        config = Qwen2Config(**SHAPES[shape], max_position_embeddings=2048, tie_word_embeddings=False)
        cls = Qwen2ForCausalLM
    with torch.device(device):  # built where it runs: a 4B model never passes through CPU memory
        model = cls._from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    return model.eval()


def make_batch(lengths: list[int], vocab: int, seed: int) -> list[tinker.Datum]:
    g = torch.Generator().manual_seed(seed)
    data = []
    for n in lengths:
        tokens = torch.randint(0, vocab, (n + 1,), generator=g).tolist()
        data.append(tinker.Datum(model_input=tinker.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs={
            "target_tokens": tokens[1:], "logprobs": [-7.0] * n,
            "advantages": (torch.randn(n, generator=g) * 0.1).tolist()}))
    return data


class PeakRSS:
    """Highest resident set size during the block, minus the RSS when it started (bytes)."""

    def __enter__(self):
        _malloc_trim()
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self._rss())
        self.delta = self.peak - self.start


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: peaks may then be underestimated
        pass


def train_step(learner, data) -> None:
    learner.forward_backward(data, "importance_sampling")
    learner.optim_step(ADAM)


def cpu_suite(rounds: int) -> list[dict]:
    from inference.models import ensure_tiny_model
    from transformers import AutoModelForCausalLM

    g = torch.Generator().manual_seed(0)
    workloads = {  # model -> (base model, LoRA rank, datum lengths per step)
        "tiny (0.8M)": (lambda: AutoModelForCausalLM.from_pretrained(str(ensure_tiny_model())), 8,
                        torch.randint(32, 257, (16,), generator=g).tolist()),
        "26M": (lambda: build_model("26M", "cpu", torch.float32), 16,
                torch.randint(32, 193, (8,), generator=g).tolist()),
    }
    variants = {
        "one datum per pass (baseline)": dict(micro_batch_tokens=1),
        "padded micro-batches": dict(packing=False, micro_batch_tokens=1024),
        "packed micro-batches": dict(micro_batch_tokens=1024),
        "packed + grad checkpointing": dict(micro_batch_tokens=1024, gradient_checkpointing=True),
    }
    rows = []
    for model_name, (build, rank, lengths) in workloads.items():
        learners = {v: LoRALearner(model_name, LoraSpec(rank=rank, seed=0), base_model=build(), **opts)
                    for v, opts in variants.items()}
        data = make_batch(lengths, learners[next(iter(variants))].vocab_size, seed=1)
        times = {v: [] for v in variants}
        peaks = {v: [] for v in variants}
        for learner in learners.values():
            train_step(learner, data)  # warm-up
        for _ in range(rounds):
            for v, learner in learners.items():
                with PeakRSS() as mem:
                    t0 = time.perf_counter()
                    train_step(learner, data)
                    times[v].append(time.perf_counter() - t0)
                peaks[v].append(mem.delta)
        base = next(iter(variants))
        for v in variants:
            step_s, peak = statistics.median(times[v]), max(peaks[v])
            rows.append({"model": model_name, "variant": v, "tokens": sum(lengths), "step_s": step_s,
                         "tok_s": sum(lengths) / step_s, "speedup": statistics.median(times[base]) / step_s,
                         "peak_mb": peak / 2**20, "peak_ratio": peak / max(max(peaks[base]), 1)})
        del learners
    return rows


def model_flops_per_token(shape: str, seq_len: int) -> float:
    s = SHAPES[shape]
    head_dim = s.get("head_dim", s["hidden_size"] // s["num_attention_heads"])
    q_dim, kv_dim = s["num_attention_heads"] * head_dim, s["num_key_value_heads"] * head_dim
    per_layer = s["hidden_size"] * (2 * q_dim + 2 * kv_dim) + 3 * s["hidden_size"] * s["intermediate_size"]
    linear = s["num_hidden_layers"] * per_layer + s["hidden_size"] * s["vocab_size"]
    attention = 2 * s["num_hidden_layers"] * seq_len * q_dim  # QK^T and AV, causal (half the square)
    return 2 * (2 * linear + attention)  # forward + activation-gradient backward


def gpu_suite(device: str, shape: str, ranks: list[int], tokens_per_step: list[int], seq_len: int,
              rounds: int) -> list[dict]:
    attn = "flash_attention_2" if _has_flash_attn() else "sdpa"  # flash-attn: varlen attention for packing
    base = build_model(shape, device, torch.bfloat16, attn)
    rows = []
    for rank in ranks:
        for tokens in tokens_per_step:
            learner = LoRALearner(shape, LoraSpec(rank=rank, seed=0), dtype=torch.bfloat16, device=device,
                                  base_model=base, micro_batch_tokens=16384, gradient_checkpointing=True)
            data = make_batch([seq_len] * (tokens // seq_len), SHAPES[shape]["vocab_size"], seed=rank)
            train_step(learner, data)  # warm-up
            _sync(device)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                train_step(learner, data)
                _sync(device)
                times.append(time.perf_counter() - t0)
            step_s = statistics.median(times)
            mfu = tokens * model_flops_per_token(shape, seq_len) / step_s / PEAK_BF16_FLOPS
            rows.append({"model": f"{shape} bf16 {attn}", "variant": f"LoRA r{rank}", "tokens": tokens,
                         "step_s": step_s, "tok_s": tokens / step_s, "mfu": mfu,
                         "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0.0})
            base = learner.model.unload()  # take the LoRA layers out again for the next configuration
            del learner
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _has_flash_attn() -> bool:
    try:
        import flash_attn  # noqa: F401
        return True
    except ImportError:
        return False


def print_table(rows: list[dict], gpu: bool) -> None:
    if gpu:
        print("| model | LoRA | tokens/step | step s | tokens/s | MFU | peak GPU MiB |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['model']} | {r['variant']} | {r['tokens']} | {r['step_s']:.3f} | {r['tok_s']:.0f} | "
                  f"{r['mfu']:.1%} | {r['peak_mb']:.0f} |")
        return
    print("| model | variant | tokens/step | step s (median) | tokens/s | × baseline | peak Δ RSS MiB "
          "| × baseline |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['variant']} | {r['tokens']} | {r['step_s']:.3f} | {r['tok_s']:.0f} | "
              f"{r['speedup']:.2f} | {r['peak_mb']:.1f} | {r['peak_ratio']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=3, help="measured steps per variant (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: on a shared 2-core machine 2 threads oversubscribe and stall)")
    parser.add_argument("--shape", default="Qwen3-4B", help="GPU model shape")
    parser.add_argument("--ranks", default="16,32")
    parser.add_argument("--tokens", default="16384,65536", help="GPU tokens per step")
    parser.add_argument("--seq-len", type=int, default=2048)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} | {platform.node()} | {platform.processor() or platform.machine()}"
          f" | {os.cpu_count()} cpus | torch {torch.__version__} | threads {torch.get_num_threads()}")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("--device cuda: no CUDA device here (torch.cuda.is_available() is False)")
        print(f"# {torch.cuda.get_device_name()}")
        rows = gpu_suite("cuda", args.shape, [int(r) for r in args.ranks.split(",")],
                         [int(t) for t in args.tokens.split(",")], args.seq_len, args.rounds)
    else:
        rows = cpu_suite(args.rounds)
    print_table(rows, gpu=args.device == "cuda")


if __name__ == "__main__":
    main()
