"""Sandbox overhead per evaluation and verifier-pool throughput, each against a baseline from the same run.

    .venv/bin/python bench/bench_sandbox.py [--runs 40] [--evals 64] [--work-s 0.25] [--overhead-only]

1. Overhead: median wall time of a bare `python -c pass`, of the same under bare bwrap (its namespaces, the
   host's root read-only), of a full sandboxed evaluation of a trivial program (uid lease, run dir, cgroups,
   the whole launch stack, output pipes, result read-back, clean-up), and of the same protocol with every
   protection layer off (what the runner protocol alone costs). Measurements are interleaved round-robin so
   that load drift on a shared machine hits all variants alike. Goal: <= +30 ms median over bare bwrap.
2. Throughput: `--evals` CPU-bound circle-packing evaluations (each burns ~`--work-s` s of CPU, then returns a
   valid packing) sequentially in-process vs on a local Ray pool with 2 CPUs (and the threaded local backend),
   in interleaved rounds. Goal: >= 1.7x the sequential rate on 2 cores. As a ceiling, the same CPU work as
   bare processes 1 and 2 at a time shows how much parallelism the machine offers at that moment.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from envs.base import State  # noqa: E402
from envs.circle_packing import CirclePackingEnv  # noqa: E402
from envs.pool import VerifierPool  # noqa: E402
from envs.sandbox import Limits, SandboxJob, run_sandboxed  # noqa: E402
from envs.sandbox.detect import current_profile, detect_profile  # noqa: E402
from envs.sandbox.profile import LAYERS  # noqa: E402

TRIVIAL = SandboxJob("def main():\n    return 0\n", "main", result="json")


BARE = "bare `python -c pass`"
BARE_BWRAP = "bare bwrap + `python -c pass`"


def overhead(runs: int) -> dict[str, float]:
    full, bare_protocol = current_profile(), detect_profile(set(LAYERS))
    bwrap = [full.bwrap, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--unshare-all",
             "--die-with-parent", "--new-session", sys.executable, "-c", "pass"]
    variants = {
        BARE: lambda: subprocess.run([sys.executable, "-c", "pass"], check=True),
        **({BARE_BWRAP: lambda: subprocess.run(bwrap, check=True)} if full.bwrap else {}),
        "runner protocol, no protection": lambda: run_sandboxed(TRIVIAL, Limits(timeout_s=30), profile=bare_protocol),
        "full sandbox": lambda: run_sandboxed(TRIVIAL, Limits(timeout_s=30), profile=full),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for name, fn in variants.items():  # warm-up (page cache, profile detection)
        fn()
    for _ in range(runs):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) * 1000 for name, ts in times.items()}


def loop_iterations(work_s: float) -> int:
    """How many `x += i` iterations burn about `work_s` CPU seconds on this machine."""
    t0, n = time.process_time(), 0
    while time.process_time() - t0 < 0.2:
        for _ in range(100_000):
            n += 1
    return int(n * work_s / 0.2)


def cpu_program(iterations: int) -> str:
    """A circle-packing answer that burns CPU, then returns the (valid) baseline packing."""
    baseline = CirclePackingEnv(n=26).baseline_program()
    return (baseline + f"\n\n_run = run_packing\n\ndef run_packing():\n    x = 0\n"
            f"    for i in range({iterations}):\n        x += i\n    return _run()\n")


class BareProcesses:
    """The ceiling: the same CPU work as plain `python -c` processes, `width` at a time, no sandbox, no pool."""

    def __init__(self, iterations: int, width: int):
        loop = f"def work():\n    x = 0\n    for i in range({iterations}):\n        x += i\n\nwork()\n"
        self.argv = [sys.executable, "-c", loop]
        self.width = width

    def evaluate(self, completions, states):
        for start in range(0, len(completions), self.width):
            procs = [subprocess.Popen(self.argv) for _ in completions[start:start + self.width]]
            assert all(p.wait() == 0 for p in procs)
        return []

    def close(self):
        pass


def throughput(evals: int, work_s: float, rounds: int) -> dict[str, float]:
    """Evaluations per second of each pool; rounds interleave the pools so load drift hits all alike."""
    env = CirclePackingEnv(n=26, timeout_s=60, memory_mb=512)
    iterations = loop_iterations(work_s)
    completion = f"```python\n{cpu_program(iterations)}```"
    pools = {"sequential (local, 1 slot)": VerifierPool(env, backend="local", num_cpus=1, progress=False),
             "local threads, 2 slots": VerifierPool(env, backend="local", num_cpus=2, progress=False),
             "Ray pool, 2 CPUs": VerifierPool(env, backend="ray", num_cpus=2, progress=False),
             "ceiling: bare processes, 1 at a time": BareProcesses(iterations, 1),
             "ceiling: bare processes, 2 at a time": BareProcesses(iterations, 2)}
    elapsed = {name: 0.0 for name in pools}
    for pool in pools.values():
        pool.evaluate([completion] * 2, [State()] * 2)  # warm-up: Ray workers start, imports load
    per_round = evals // rounds
    for _ in range(rounds):
        for name, pool in pools.items():
            t0 = time.perf_counter()
            results = pool.evaluate([completion] * per_round, [State()] * per_round)
            elapsed[name] += time.perf_counter() - t0
            assert all(r.ok for r in results), [r.message for r in results if not r.ok][:3]
    for pool in pools.values():
        pool.close()
    return {name: per_round * rounds / t for name, t in elapsed.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--evals", type=int, default=64)
    parser.add_argument("--work-s", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--overhead-only", action="store_true", help="part 1 only")
    args = parser.parse_args()
    layers = current_profile().layers()
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')} | {platform.node()} | {os.cpu_count()} CPUs | "
          f"Python {platform.python_version()} | load avg {os.getloadavg()[0]:.2f}")
    print(f"# protections on: {', '.join(k for k, v in layers.items() if v)}; "
          f"off: {', '.join(k for k, v in layers.items() if not v) or 'none'}\n")
    ms = overhead(args.runs)
    base, bwrap = ms[BARE], ms.get(BARE_BWRAP)
    print(f"| per-evaluation cost ({args.runs} runs, median) | ms | vs bare | vs bare bwrap |\n|---|---:|---:|---:|")
    for name, value in ms.items():
        over_bwrap = "" if bwrap is None else f"{value - bwrap:+.1f} ms"
        print(f"| {name} | {value:.1f} | {value - base:+.1f} ms ({value / base:.2f}x) | {over_bwrap} |")
    if args.overhead_only:
        print(f"\n# load avg after: {os.getloadavg()[0]:.2f}")
        return
    rates = throughput(args.evals, args.work_s, args.rounds)
    seq = rates["sequential (local, 1 slot)"]
    print(f"\n| {args.evals} CPU-bound evaluations (~{args.work_s:g} s CPU each) | evals/s | vs sequential |\n"
          "|---|---:|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.2f} | {rate / seq:.2f}x |")
    print(f"\n# load avg after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
