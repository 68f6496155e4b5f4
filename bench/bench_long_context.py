"""Long-context learner step: is memory bounded by the micro-batch (token budget), not by the batch?

    .venv/bin/python bench/bench_long_context.py                          # 64 x 20,480 tokens vs 1 x 20,480
    .venv/bin/python bench/bench_long_context.py --seqs 8 --checkpointing both   # gradient checkpointing on/off

One step = forward_backward(importance_sampling, random advantages) + optim_step with the tiny model (Qwen2,
hidden 128, 2 layers, vocab 2048) on CPU, fp32, LoRA r8 on all projections, token budget --budget per pass
(default 32,768: one 20,480-token sequence per pass). For each gradient-checkpointing setting the baseline is
the same step on ONE sequence, measured in the same run; the table gives the ratio of peak memory (N sequences
vs 1; goal ~1.0x) and of tokens/s.

Every measurement runs in a fresh process (so ru_maxrss is its own), after a short warm-up step. Peak RSS =
ru_maxrss at the end; delta = the highest RSS sampled (every 2 ms) during the step minus the RSS just before it
(activations, temporaries, and the O(tokens) prepared inputs). glibc's mmap threshold is pinned at
--mmap-threshold bytes (default 1 MiB, 0 = glibc's dynamic default) so that freed tensors go back to the OS and
RSS follows live memory; with the dynamic default, glibc keeps freed ~20 MB buffers in its heap and RSS
becomes the allocator's high-water mark, which drifts up with the number of passes (fragmentation), not with
what the learner holds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class PeakRSS:
    def __enter__(self):
        _malloc_trim()
        self.start = self.peak = _rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, _rss())
        self.delta = self.peak - self.start


def make_batch(n_seqs: int, seq_len: int, vocab: int, seed: int = 0) -> list:
    import tinker
    import torch

    g = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(n_seqs):
        tokens = torch.randint(0, vocab, (seq_len + 1,), generator=g)
        data.append(tinker.Datum(
            model_input=tinker.ModelInput.from_ints(tokens[:-1].tolist()),
            loss_fn_inputs={"target_tokens": tinker.TensorData.from_torch(tokens[1:]),
                            "logprobs": tinker.TensorData.from_torch(-7.6 + 0.1 * torch.randn(seq_len, generator=g)),
                            "advantages": tinker.TensorData.from_torch(torch.randn(seq_len, generator=g))}))
    return data


def child(args) -> dict:
    """One measurement in this (fresh) process; prints a JSON line."""
    import tinker
    import torch

    from inference.models import resolve_model
    from trainer.learner import LoRALearner, LoraSpec
    from trainer.learner.inputs import plan_micro_batches

    torch.set_num_threads(args.threads)
    learner = LoRALearner(resolve_model("tiny"), LoraSpec(rank=args.rank, seed=0), micro_batch_tokens=args.budget,
                          gradient_checkpointing=args.gc)
    adam = tinker.AdamParams(learning_rate=1e-4)
    learner.forward_backward(make_batch(1, 64, learner.vocab_size, seed=99), "importance_sampling")  # warm-up
    learner.optim_step(adam)
    data = make_batch(args.n, args.seq_len, learner.vocab_size)
    passes = len(plan_micro_batches([args.seq_len] * args.n, args.budget, learner.packing))
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        out = learner.forward_backward(data, "importance_sampling")
        t1 = time.perf_counter()
        stats = learner.optim_step(adam)
        t2 = time.perf_counter()
    loss = out["metrics"]["loss:sum"]
    assert torch.isfinite(torch.tensor(loss)) and stats["grad_norm:mean"] > 0
    return {"seqs": args.n, "gc": args.gc, "tokens": args.n * args.seq_len, "passes": passes, "fb_s": t1 - t0,
            "optim_s": t2 - t1, "step_s": t2 - t0, "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "delta": mem.delta, "rss_before": mem.start, "loss": loss, "grad_norm": stats["grad_norm:mean"]}


def measure(args, n: int, gc: bool) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--n", str(n), "--seq-len", str(args.seq_len),
           "--budget", str(args.budget), "--threads", str(args.threads), "--rank", str(args.rank)]
    cmd += ["--gc"] if gc else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {n} seqs gc={gc} failed:\n{proc.stderr[-4000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {n:>3} x {args.seq_len} tokens, checkpointing {'on' if gc else 'off'}: step {row['step_s']:.1f} s, "
          f"peak RSS {row['maxrss'] / 2**20:.0f} MiB, delta {row['delta'] / 2**20:.0f} MiB", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", type=int, default=64, help="sequences in the big step (baseline: 1)")
    parser.add_argument("--seq-len", type=int, default=20480)
    parser.add_argument("--budget", type=int, default=32768, help="micro_batch_tokens: tokens per forward pass")
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], default="off")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the 2-core box is shared)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--mmap-threshold", type=int, default=2**20,
                        help="MALLOC_MMAP_THRESHOLD_ for the measured processes; 0 = glibc's dynamic default")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--gc", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    import torch

    print(f"# {time.strftime('%Y-%m-%d %H:%M')} | {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f} | torch {torch.__version__} | threads "
          f"{args.threads} | budget {args.budget} | LoRA r{args.rank} | MALLOC_MMAP_THRESHOLD_="
          f"{args.mmap_threshold or 'glibc default'}", flush=True)
    settings = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    rows = []
    for gc in settings:
        base = measure(args, 1, gc)
        big = measure(args, args.seqs, gc)
        for r in (base, big):
            r["mem_ratio"] = r["delta"] / base["delta"]
            r["rss_ratio"] = r["maxrss"] / base["maxrss"]
            r["speed_ratio"] = (r["tokens"] / r["step_s"]) / (base["tokens"] / base["step_s"])
        rows += [base, big]
    print(f"\nload avg at the end {os.getloadavg()[0]:.1f}\n")
    print("| grad ckpt | seqs x len | tokens | passes | fwd+bwd s | optim s | step s | tokens/s | x 1 seq "
          "| peak RSS MiB | x 1 seq | peak delta RSS MiB | x 1 seq |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {'on' if r['gc'] else 'off'} | {r['seqs']} x {args.seq_len} | {r['tokens']:,} | {r['passes']} | "
              f"{r['fb_s']:.1f} | {r['optim_s']:.3f} | {r['step_s']:.1f} | {r['tokens'] / r['step_s']:,.0f} | "
              f"{r['speed_ratio']:.2f} | {r['maxrss'] / 2**20:.0f} | {r['rss_ratio']:.2f}x | "
              f"{r['delta'] / 2**20:.0f} | {r['mem_ratio']:.2f}x |")


if __name__ == "__main__":
    main()
