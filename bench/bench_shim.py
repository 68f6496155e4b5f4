"""The same RL step through `ttt serve` (official SDK 0.38 over HTTP) and through the in-process backend.

One step = forward_backward (importance_sampling) + optim_step, then save_weights_and_get_sampling_client +
2 concurrent samples. The served arm runs `ttt serve` as its own process (as deployed: the client's SDK
threads and the server's learner do not share a GIL); the in-process arm runs the same Engine code in this
process. Both use the same model, seeds, data and number of calls, torch pinned to the same thread count, and
their results are compared (|diff| <= 1e-6, identical tokens). Rounds alternate the two arms (ABBA order), and
medians are reported. Goal: served <= 1.10x in-process.

    .venv/bin/python bench/bench_shim.py [--sampler hf|vllm] [--rounds 16] [--server process|thread] [--out F]
        [--also-serve DIR]   # a third arm: `ttt serve` from another checkout (e.g. `git archive` of an older
                             # commit), in the same rounds: before/after comparisons without drift between runs
        [--serve-env K=V] [--also-serve-env K=V]   # environment for one server arm only (`--also-serve .
                                                   # --also-serve-env GOMP_SPINCOUNT=10000`: an A/B in one run)
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TINKER_TELEMETRY", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.tolerances import logprob_tol

API_KEY = "tml-bench"
MAX_MODEL_LEN, MAX_LORA_RANK = 512, 8
PHASES = ("fwd_bwd + optim_step", "save_weights_and_get_sampling_client", "sample (2 prompts x 4)", "total step")
CPU_ROW = "CPU s per step, all processes"
TOL = 1e-6
GOAL = 1.10


def make_batch(n_datums: int, prompt_len: int, completion_len: int):
    from tinker import types

    data = []
    for i in range(n_datums):
        seq = [(7 * i + 13 * t) % 1000 + 5 for t in range(prompt_len + completion_len)]
        n_prompt = prompt_len - 1
        n = len(seq) - 1
        data.append(types.Datum(model_input=types.ModelInput.from_ints(seq[:-1]), loss_fn_inputs={
            "target_tokens": seq[1:], "logprobs": [0.0] * n_prompt + [-6.0] * (n - n_prompt),
            "advantages": [0.0] * n_prompt + [(-1.0) ** i] * (n - n_prompt)}))
    return data


def one_step(training, data, prompts) -> tuple[dict, dict]:
    """-> ({phase: seconds}, the step's results as plain values for the equality check)."""
    from tinker import types

    t0 = time.perf_counter()
    fb = training.forward_backward(data, "importance_sampling")
    opt = training.optim_step(types.AdamParams(learning_rate=1e-3))
    fb_out, opt_out = fb.result(), opt.result()
    t1 = time.perf_counter()
    sampler = training.save_weights_and_get_sampling_client().result()
    t2 = time.perf_counter()
    futures = [sampler.sample(types.ModelInput.from_ints(p), 4, types.SamplingParams(max_tokens=16, seed=i))
               for i, p in enumerate(prompts)]
    samples = [f.result() for f in futures]
    t3 = time.perf_counter()
    results = {"fb_logprobs": [out["logprobs"].tolist() for out in fb_out.loss_fn_outputs],
               "fb_metrics": dict(fb_out.metrics), "optim_metrics": dict(opt_out.metrics or {}),
               "tokens": [[list(s.tokens) for s in r.sequences] for r in samples],
               "sample_logprobs": [[list(s.logprobs or []) for s in r.sequences] for r in samples]}
    return dict(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t3 - t0))), results


def max_diff(a, b, where: str = "") -> float:
    """Largest |a - b| over matching nested values; ValueError on any structural / token mismatch."""
    if isinstance(a, dict):
        if set(a) != set(b):
            raise ValueError(f"{where}: keys differ: {sorted(a)} vs {sorted(b)}")
        return max([max_diff(a[k], b[k], f"{where}.{k}") for k in a], default=0.0)
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            raise ValueError(f"{where}: lengths differ")
        return max([max_diff(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b))], default=0.0)
    if isinstance(a, int) and isinstance(b, int):  # token ids: exact
        if a != b:
            raise ValueError(f"{where}: token {a} != {b}")
        return 0.0
    return abs(float(a) - float(b))


def bootstrap_ci(values: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median of `values`."""
    import random

    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
    return medians[int(0.025 * n)], medians[int(0.975 * n) - 1]


def _cpu_seconds(pid: int) -> float:
    """CPU time of all threads of process `pid` (ns resolution, from schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):  # a thread that just ended
            pass
    return total / 1e9


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    """["KEY=VALUE", ...] -> {KEY: VALUE}: environment for one server arm (A/B of e.g. GOMP_SPINCOUNT)."""
    bad = [kv for kv in pairs if "=" not in kv or not kv.split("=", 1)[0]]
    if bad:
        raise SystemExit(f"bench_shim: --serve-env / --also-serve-env take KEY=VALUE, got {bad[0]!r}")
    return dict(kv.split("=", 1) for kv in pairs)


class ServeProcess:
    """`ttt serve` in a child process (what `ttt serve ...` runs), on a free loopback port."""

    def __init__(self, sampler: str, threads: int, checkpoint_dir: str, root: Path = ROOT,
                 env: dict[str, str] | None = None):
        code = "import sys; from shim.server import serve_main; sys.exit(serve_main(sys.argv[1:]))"
        cmd = [sys.executable, "-c", code, "--model", "tiny", "--sampler", sampler, "--port", "0",
               "--api-key", API_KEY, "--max-lora-rank", str(MAX_LORA_RANK), "--max-model-len", str(MAX_MODEL_LEN),
               "--checkpoint-dir", checkpoint_dir, "--torch-threads", str(threads), "--log-level", "WARNING"]
        self.proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.url = None
        for line in self.proc.stdout:
            if "listening on " in line:
                self.url = line.split("listening on ", 1)[1].strip()
                break
        if self.url is None:
            self.stop()
            raise RuntimeError(f"ttt serve exited ({self.proc.returncode}) before listening")
        # keep reading its stdout, so that a chatty sampler can never block the server on a full pipe
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Arm:
    """One backend: its clients, one training model, the per-round timings and results."""

    def __init__(self, name: str, service, cpu_pids: list[int]):
        self.name, self.service, self.cpu_pids = name, service, cpu_pids
        self.training = service.create_lora_training_client(base_model="tiny", rank=8, seed=0).result()
        self.timings: dict[str, list[float]] = {k: [] for k in (*PHASES, CPU_ROW)}
        self.results: list[dict] = []

    def _cpu(self) -> float:
        return time.process_time() + sum(_cpu_seconds(pid) for pid in self.cpu_pids)

    def step(self, data, prompts, record: bool = True) -> None:
        cpu0 = self._cpu()
        timings, results = one_step(self.training, data, prompts)
        cpu = self._cpu() - cpu0
        if record:
            for k, v in timings.items():
                self.timings[k].append(v)
            self.timings[CPU_ROW].append(cpu)
            self.results.append(results)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sampler", default="hf", choices=["hf", "vllm"])
    p.add_argument("--rounds", type=int, default=16, help="timed steps per arm, interleaved (after 1 warm-up)")
    p.add_argument("--datums", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch threads in both arms (default: torch's)")
    p.add_argument("--server", default="process", choices=["process", "thread"],
                   help="process: `ttt serve` as a child process (as deployed); thread: in this process (the "
                        "server, the SDK's threads and the in-process learner then share one GIL)")
    p.add_argument("--out", default=None, help="also write the report (markdown) here")
    p.add_argument("--also-serve", default=None, metavar="DIR",
                   help="a third arm: `ttt serve` run from checkout DIR (its own process), interleaved with the two "
                        "others in the same rounds (all 6 orders in turn); its results are checked equal too")
    p.add_argument("--serve-env", action="append", default=[], metavar="KEY=VALUE",
                   help="an environment variable for this checkout's `ttt serve` process only (repeatable)")
    p.add_argument("--also-serve-env", action="append", default=[], metavar="KEY=VALUE",
                   help="an environment variable for the --also-serve process only (repeatable)")
    args = p.parse_args(argv)
    serve_env, also_serve_env = _env_pairs(args.serve_env), _env_pairs(args.also_serve_env)

    import tinker
    import torch

    from shim import make_engine, make_service_client

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    engine_kwargs = {"sampler_kind": args.sampler, "max_lora_rank": MAX_LORA_RANK,
                         "sampler_kwargs": {"max_model_len": MAX_MODEL_LEN}}
    engine = make_engine("tiny", checkpoint_dir=tempfile.mkdtemp(prefix="bench-shim-local-"), **engine_kwargs)
    server = thread_server = served_engine = None
    if args.server == "process":
        server = ServeProcess(args.sampler, threads, tempfile.mkdtemp(prefix="bench-shim-served-"),
                              env=serve_env)
        url, served_pids = server.url, [server.pid]
    else:
        from shim.server import start_server

        served_engine = make_engine("tiny", checkpoint_dir=tempfile.mkdtemp(prefix="bench-shim-served-"),
                                    **engine_kwargs)
        thread_server, _ = start_server(served_engine, API_KEY)
        url, served_pids = thread_server.url, []
    data, prompts = make_batch(args.datums, 48, 48), [[5 + i, 17, 42, 9, 101, 33] for i in range(2)]
    local_service = make_service_client("local", engine=engine)
    served_service = tinker.ServiceClient(base_url=url, api_key=API_KEY)
    other = other_service = None
    try:
        arms = [Arm("in-process", local_service, []), Arm("ttt serve", served_service, served_pids)]
        if args.also_serve:
            other = ServeProcess(args.sampler, threads, tempfile.mkdtemp(prefix="bench-shim-other-"),
                                 Path(args.also_serve).resolve(), env=also_serve_env)
            other_service = tinker.ServiceClient(base_url=other.url, api_key=API_KEY)
            arms.append(Arm(f"ttt serve from {args.also_serve}", other_service, [other.pid]))
        orders = [arms, arms[::-1]] if len(arms) == 2 else list(itertools.permutations(arms))
        for arm in arms:
            arm.step(data, prompts, record=False)  # warm-up: first-call allocations, adapter load paths
        for r in range(args.rounds):
            for arm in orders[r % len(orders)]:  # ABBA (or every order): drift on a shared machine hits all arms
                arm.step(data, prompts)
    finally:
        local_service.close()
        served_service.close("success")
        for srv, svc in ((other, other_service), (server, None)):
            if svc is not None:
                svc.close("success")
            if srv is not None:
                srv.stop()
        if thread_server is not None:
            thread_server.shutdown()
            thread_server.server_close()
        for eng in (engine, served_engine):  # a vLLM sampler owns engine processes
            close = getattr(getattr(eng, "pool", None) and eng.pool.sampler, "close", None)
            if close is not None:
                close()
    load_after = os.getloadavg()

    local, served = arms[:2]
    diffs = {f"{arm.name} round {i} {key}": max_diff(a[key], b[key], f"round {i}.{key}")
             for arm in arms[1:] for i, (a, b) in enumerate(zip(local.results, arm.results)) for key in a}
    # the learner's numbers must match to 1e-6; sampled logprobs only to fp32 rounding: the pool may batch the
    # two sample requests into one engine call in one arm and two in the other, and at 2+ torch threads a
    # matmul's rounding depends on the batch shape (measured 4-6e-6). Tokens are compared exactly.
    tols = {k: logprob_tol([x for r in local.results for g in r["sample_logprobs"] for x in g])
            if k.endswith("sample_logprobs") else TOL for k in diffs}
    over = {k: v for k, v in diffs.items() if v > tols[k]}
    if over:
        where = ", ".join(f"{k} ({v:.2g} > {tols[k]:.2g})" for k, v in over.items())
        raise SystemExit(f"bench_shim: served and in-process results differ: {where}")
    worst = max(diffs.values(), default=0.0)
    rows = [("| phase | in-process median s | ttt serve median s | served - in-process s | ratio of medians "
            "| median per-round ratio |"), "|---|---|---|---|---|---|"]
    for phase in (*PHASES, CPU_ROW):
        lo, se = statistics.median(local.timings[phase]), statistics.median(served.timings[phase])
        paired = statistics.median(s / x for s, x in zip(served.timings[phase], local.timings[phase]))
        rows.append(f"| {phase} | {lo:.3f} | {se:.3f} | {se - lo:+.3f} | {se / lo:.3f}x | {paired:.3f}x |")
    per_round = [s / lo for s, lo in zip(served.timings["total step"], local.timings["total step"])]
    ratio = statistics.median(served.timings["total step"]) / statistics.median(local.timings["total step"])
    paired, (low, high) = statistics.median(per_round), bootstrap_ci(per_round)
    verdict = (f"Goal served <= {GOAL:.2f}x in-process (total step, median of the per-round ratios: each round runs "
               f"both arms back to back, so load drift cancels): {'met' if paired <= GOAL else 'NOT met'}, "
               f"{paired:.3f}x (95% bootstrap CI {low:.3f}-{high:.3f}x; ratio of medians {ratio:.3f}x).")
    table = "\n".join(rows) + "\n\n" + verdict
    if other is not None:
        third = arms[2]
        rows = [(f"| phase | {third.name} median s | per-round ratio to in-process (95% CI) | per-round ratio to "
                f"this checkout's ttt serve (95% CI) |"), "|---|---|---|---|"]
        for phase in (*PHASES, CPU_ROW):
            cells = []
            for base in (local, served):
                ratios = [t / x for t, x in zip(third.timings[phase], base.timings[phase])]
                low, high = bootstrap_ci(ratios)
                cells.append(f"{statistics.median(ratios):.3f}x ({low:.3f}-{high:.3f})")
            rows.append(f"| {phase} | {statistics.median(third.timings[phase]):.3f} | {cells[0]} | {cells[1]} |")
        table += "\n\n" + "\n".join(rows)
    server_desc = ("`ttt serve` in its own process" if args.server == "process"
                   else "`ttt serve` in a thread of the bench process")
    header = (f"Sampler {args.sampler}; {args.datums} datums x 95 tokens (importance_sampling) + optim_step, then "
              f"save_weights_and_get_sampling_client and 2 prompts x 4 samples x 16 tokens. {server_desc}; "
              f"torch threads {threads} in all arms; {os.cpu_count()} CPUs. {args.rounds} rounds per arm after "
              f"1 warm-up, interleaved {'ABBA' if len(arms) == 2 else 'in all orders in turn'}; medians. "
              f"Load average before {load_before[0]:.2f}, after "
              f"{load_after[0]:.2f} (1 min). Results equal (sampled logprobs to fp32 rounding): max |served - "
              f"in-process| = {worst:.2g} "
              f"(tokens identical). Total-step ratio per round: min {min(per_round):.3f}x, max "
              f"{max(per_round):.3f}x.")
    print(header + "\n\n" + table)
    if args.out:
        Path(args.out).write_text(f"# bench_shim: `ttt serve` vs in-process backend\n\n"
                                  f"`.venv/bin/python bench/bench_shim.py --sampler {args.sampler} --rounds "
                                  f"{args.rounds} --server {args.server}"
                                  f"{' --also-serve ' + args.also_serve if args.also_serve else ''}`\n\n"
                                  f"{header}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
