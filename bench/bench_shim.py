"""The same RL step through `ttt serve` (official SDK 0.38 over HTTP) and through the in-process backend.

One step = forward_backward (importance_sampling) + optim_step, then save_weights_and_get_sampling_client +
sample. Both backends share one Engine (same learner code, same sampler), so the difference is the shim's
HTTP / protobuf / polling overhead. Goal: served <= 1.10x in-process.

    .venv/bin/python bench/bench_shim.py [--sampler hf|vllm] [--steps 4] [--out bench/RESULTS_shim.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TINKER_TELEMETRY", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

API_KEY = "tml-bench"


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


def one_step(training, data, prompts, timings: dict):
    from tinker import types

    t0 = time.perf_counter()
    fb = training.forward_backward(data, "importance_sampling")
    opt = training.optim_step(types.AdamParams(learning_rate=1e-3))
    fb.result(), opt.result()
    t1 = time.perf_counter()
    sampler = training.save_weights_and_get_sampling_client().result()
    futures = [sampler.sample(types.ModelInput.from_ints(p), 4, types.SamplingParams(max_tokens=16, seed=i))
               for i, p in enumerate(prompts)]
    [f.result() for f in futures]
    t2 = time.perf_counter()
    timings.setdefault("train (fwd_bwd + optim)", []).append(t1 - t0)
    timings.setdefault("save + sample", []).append(t2 - t1)
    timings.setdefault("total step", []).append(t2 - t0)


def run(client, steps: int, data, prompts) -> dict:
    training = client.create_lora_training_client(base_model="tiny", rank=8, seed=0).result()
    one_step(training, data, prompts, {})  # warm-up: first-call allocations, adapter load paths
    timings: dict = {}
    for _ in range(steps):
        one_step(training, data, prompts, timings)
    return timings


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sampler", default="hf", choices=["hf", "vllm"])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--datums", type=int, default=16)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import tinker
    import torch

    from shim import make_engine, make_service_client
    from shim.server import start_server

    engine = make_engine("tiny", sampler_kind=args.sampler, checkpoint_dir=tempfile.mkdtemp(prefix="bench-shim-"),
                         sampler_kwargs={"max_model_len": 512})
    server, _ = start_server(engine, API_KEY)
    data, prompts = make_batch(args.datums, 48, 48), [[5 + i, 17, 42, 9, 101, 33] for i in range(2)]
    results = {}
    for name in ("in-process", "ttt serve", "in-process (repeat)"):  # repeat: drift on a shared machine
        client = (make_service_client("local", engine=engine) if name.startswith("in-process")
                  else tinker.ServiceClient(base_url=server.url, api_key=API_KEY))
        results[name] = run(client, args.steps, data, prompts)
        client.close() if name.startswith("in-process") else client.close("success")
    server.shutdown()

    rows = ["| phase | in-process median s | ttt serve median s | ratio served / in-process |", "|---|---|---|---|"]
    for phase in results["in-process"]:
        local = statistics.median(results["in-process"][phase] + results["in-process (repeat)"][phase])
        served = statistics.median(results["ttt serve"][phase])
        rows.append(f"| {phase} | {local:.3f} | {served:.3f} | {served / local:.3f}x |")
    table = "\n".join(rows)
    header = (f"Sampler {args.sampler}; {args.datums} datums x 95 tokens (importance_sampling), then 2 prompts x 4 "
              f"samples x 16 tokens; {args.steps} timed steps per backend after 1 warm-up; torch threads "
              f"{torch.get_num_threads()}, {os.cpu_count()} CPUs. In-process = median of two runs around the "
              f"served one.")
    print(header + "\n\n" + table)
    if args.out:
        Path(args.out).write_text(f"# bench_shim: `ttt serve` vs in-process backend\n\n"
                                  f"`.venv/bin/python bench/bench_shim.py --sampler {args.sampler} --steps {args.steps}`"
                                  f"\n\n{header}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
