"""Step wall time of pipeline=sync | stream | async: the real loop (trainer/loop.py, trainer/pipeline.py, the
real VerifierPool) with a simulated sampler and learner and a verifier that sleeps, driven by a trace
calibrated to the seeds' CP26 run; then a real CPU run (tiny model, HF sampler, PEFT learner) with the same
sleeping verifier, to show that the simulated clients time the loop as real ones do.

    .venv/bin/python -m bench.bench_pipeline [--steps 5] [--scale 400] [--skip-real]

Assumptions of the CP26 trace (the seeds' logs give only: 64 rollouts per step, 24-64 min per step, outputs up
to 26k tokens with heavy-tailed lengths, a 305 s evaluation timeout; the rest is stated here, not measured):
- 64 rollouts per step: 8 groups x 8 (configs/experiment/seeds_cp26.yaml).
- Output length: lognormal, median 7,000 tokens, sigma 0.8, cut at max_tokens = 26,000; ~5% hit the cap and are
  'truncated' (recorded without verification, as the loop does).
- Decoding: 20 tokens/s per sequence with every sequence of the step in one batch (an 8B model on one H100,
  ~1,300 tokens/s aggregate), so a step samples for max length / 20 s (26k tokens: 1,300 s). A request returns
  when its longest sequence ends: sync asks for each group at once (the paper's order), so a group's answers
  wait for its straggler; stream and async ask for each sequence on its own (seed s + k: the same samples),
  so each answer goes to the verifier when it ends. Sequences decode at that speed however many are in
  flight, also when async with prefetch_at < 1 starts the next step's 64 while this step's stragglers finish
  (decoding is memory-bound: an H100 decodes 64 or 80 sequences of an 8B model at about the same speed each).
- Verification: 8 CPU slots (one evaluation each). Evaluation time: 20% of programs run into the 305 s timeout
  (CP26's limit), the rest lognormal, median 30 s, sigma 1.0, capped at 305 s.
- Learner (a separate device, as on Tinker or the slurm layouts): forward_backward + optim_step 1.5 s per
  rollout (96 s a step), adapter save and swap 10 s.
- Time scale: 1 simulated second = 1/`scale` s of wall time (default 800: a 26k-token step samples for 1.6 s).
  The loop's own overhead (PUCT, datums, checkpoints: real) is not scaled.
Per step the trace also gives the lower bound max(sample, verify, train), with sample = the step's longest
sequence, verify = max(evaluation seconds / slots, longest evaluation), train = learner + swap. stream cannot beat its
floor: every answer starts verifying the moment its sequence ends (first come, first served on the slots), each
group goes to the learner once its last result is known (first come, first served), then the swap. Step 0 of async has
nothing prefetched, so every mean is over steps 1.. (steady state).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tinker import types

from envs.base import Env, State, VerifyResult, failed
from envs.toy_digits import autocorrelation_c1

TIMEOUT_S = 305.0


@dataclass
class Trace:
    tok_s: float = 20.0
    median_tokens: float = 7000.0
    sigma_tokens: float = 0.8
    max_tokens: int = 26000
    timeout_share: float = 0.20
    median_eval_s: float = 30.0
    sigma_eval: float = 1.0
    slots: int = 8
    train_s_per_rollout: float = 1.5
    swap_s: float = 10.0
    scale: float = 400.0
    fixed_sample_s: float | None = None  # every group takes this long (the comparison with the real run)

    def lengths(self, seed: int, k: int) -> np.ndarray:
        """The lengths of a request's k sequences: sequence i is fixed by its own seed, seed + i (vLLM's rule for
        n > 1), so a group request and its k single requests sample the same."""
        return np.array([min(int(np.random.default_rng(seed + i).lognormal(np.log(self.median_tokens),
                                                                           self.sigma_tokens)), self.max_tokens)
                         for i in range(k)])


def eval_seconds(text: str, trace: Trace) -> float:
    """The trace's evaluation time of one answer (simulated seconds), fixed by the answer's text."""
    rng = np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:12], 16))
    if rng.random() < trace.timeout_share:
        return TIMEOUT_S
    return float(min(rng.lognormal(np.log(trace.median_eval_s), trace.sigma_eval), TIMEOUT_S))


@dataclass
class TraceEnv(Env):
    """Scores the digits of an answer like toy_digits and sleeps for the trace's evaluation time first."""

    name: str = "trace"
    scale: float = 400.0
    timeout_share: float = 0.20
    complete: bool = True  # False (the real run): the tiny model rarely stops, its first digits are the answer

    def __post_init__(self):
        self.needs_complete_answer = self.complete

    def statement(self) -> str:
        return "Write 12 digits."

    def parse(self, completion: str) -> str | None:
        return completion

    def verify(self, answer: str, state: State) -> VerifyResult:
        seconds = eval_seconds(answer, Trace(scale=self.scale, timeout_share=self.timeout_share))
        time.sleep(seconds / self.scale)
        if seconds >= TIMEOUT_S:
            return failed("timeout", f"ran past {TIMEOUT_S:g} s")
        digits = [int(c) for c in answer if c.isdigit()][:12]
        if len(digits) < 12 or sum(digits) == 0:
            return failed("invalid", "fewer than 12 digits")
        c1 = autocorrelation_c1(np.array(digits, dtype=float))
        return VerifyResult(status="ok", reward=2.0 / c1, score=c1, value=-c1, construction=digits)


# ---- the simulated Tinker-shaped clients ----------------------------------------------------------------------

def _digits(sequence_seed: int) -> str:
    return "".join(str(d) for d in np.random.default_rng([sequence_seed, 1]).integers(0, 10, 12))


def _later(seconds: float, value) -> Future:
    future: Future = Future()
    threading.Timer(seconds, future.set_result, (value,)).start()
    return future


class TraceSampling:
    """A sampling client: a request returns when its longest sequence would have been decoded (a group request
    when the group's longest ends; stream and async ask for each sequence on its own)."""

    def __init__(self, trace: Trace, tokenizer):
        self.trace, self.tokenizer = trace, tokenizer

    def sample(self, prompt, num_samples, sampling_params, **_):
        seed = sampling_params.seed
        lengths = self.trace.lengths(seed, num_samples)
        sequences = []
        for k, n in enumerate(lengths):
            digits = _digits(seed + k)
            tokens = self.tokenizer.encode(digits, add_special_tokens=False)
            sequences.append(types.SampledSequence(
                stop_reason="length" if n >= self.trace.max_tokens else "stop", sequence_id=f"{seed}:{k}",
                tokens_np=np.asarray(tokens, np.int32), logprobs_np=np.full(len(tokens), -1.0, np.float32)))
        seconds = self.trace.fixed_sample_s or lengths.max() / self.trace.tok_s
        return _later(seconds / self.trace.scale,
                      types.SampleResponse(sequences=sequences, prompt_logprobs_np=None))

    def compute_logprobs(self, prompt):
        return _later(0.0, [None] + [0.0] * (prompt.length - 1))


class TraceTraining:
    """A training client on its own device: forward_backward echoes the sampler's logprobs after the trace's
    training time; optimizer steps and saves are free but the swap, which takes `swap_s`."""

    def __init__(self, trace: Trace, tokenizer):
        self.trace, self.tokenizer = trace, tokenizer
        self.device = ThreadPoolExecutor(max_workers=1)  # one learner: requests run in order

    def get_tokenizer(self):
        return self.tokenizer

    def _run(self, seconds: float, value) -> Future:
        return self.device.submit(lambda: (time.sleep(seconds / self.trace.scale), value)[1])

    def forward_backward(self, datums, loss_fn, config=None):
        outputs = [{"logprobs": d.loss_fn_inputs["logprobs"]} for d in datums]
        out = types.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs,
                                          metrics={"loss:sum": 0.0})
        return self._run(self.trace.train_s_per_rollout * len(datums), out)

    def forward(self, datums, loss_fn, config=None):
        outputs = [{"logprobs": types.TensorData.from_numpy(np.zeros(d.model_input.length, np.float32))}
                   for d in datums]
        return self._run(0.0, types.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord",
                                                          loss_fn_outputs=outputs, metrics={}))

    def optim_step(self, adam):
        return self._run(0.0, types.OptimStepResponse(metrics={}))

    def save_weights_and_get_sampling_client(self, *_, **__):
        return self._run(self.trace.swap_s, TraceSampling(self.trace, self.tokenizer))

    def save_weights_for_sampler(self, name, **_):
        return self._run(self.trace.swap_s, types.SaveWeightsForSamplerResponse(path=f"tinker://sim/sampler_weights/{name}"))

    def save_state(self, name, **_):
        return self._run(0.0, types.SaveWeightsResponse(path=f"tinker://sim/weights/{name}"))


class TraceService:
    def __init__(self, trace: Trace, tokenizer):
        self.trace, self.tokenizer = trace, tokenizer

    def create_lora_training_client(self, **_):
        return _later(0.0, TraceTraining(self.trace, self.tokenizer))

    def create_sampling_client(self, **_):
        return _later(0.0, TraceSampling(self.trace, self.tokenizer))


# ---- runs -------------------------------------------------------------------------------------------------------

def _config(out: Path, pipeline: str, steps: int, trace: Trace, **kw):
    from trainer.config import TrainConfig

    base = dict(out=str(out), pipeline=pipeline, steps=steps, groups=8, group_size=8, seed=0, backend="tinker",
                base_model="tiny", env={"_target_": "bench.bench_pipeline.TraceEnv", "scale": trace.scale,
                                        "timeout_share": trace.timeout_share},
                env_name="trace", verifier_backend="local", wandb_mode="disabled", progress=False,
                max_tokens=trace.max_tokens, picture_every_s=1e9)
    return TrainConfig(**{**base, **kw})


def run_mode(out: Path, pipeline: str, steps: int, trace: Trace, service=None, engine=None, **kw) -> list[dict]:
    """The real loop; the verifier pool gets `trace.slots` slots, as a verifier node would."""
    import trainer.run_setup as run_setup
    from envs.pool import VerifierPool
    from trainer.loop import run

    run_setup.VerifierPool = functools.partial(VerifierPool, num_cpus=trace.slots)
    try:
        return run(_config(out / pipeline, pipeline, steps, trace, **kw), service=service, sampler=engine,
                   log=lambda *_: None)
    finally:
        run_setup.VerifierPool = VerifierPool


def bounds(trace: Trace, steps: int, tokenizer) -> dict:
    """Per step (simulated seconds): sample, verify, train and the bounds, from the trace alone."""
    from trainer.rollouts import group_seed

    rows = []
    for step in range(steps):
        finished = []  # (seconds until the sequence ends, its evaluation's seconds or None when truncated)
        for g in range(8):
            seed = group_seed(0, step, g)
            for k, n in enumerate(trace.lengths(seed, 8)):
                text = tokenizer.decode(tokenizer.encode(_digits(seed + k), add_special_tokens=False))
                finished.append((n / trace.tok_s, eval_seconds(text, trace) if n < trace.max_tokens else None))
        sample = max(t for t, _ in finished)
        evals = [e for _, e in finished if e is not None]
        verify = max(sum(evals) / trace.slots, max(evals))
        train = trace.train_s_per_rollout * 64 + trace.swap_s
        rows.append({"sample": sample, "verify": verify, "train": train, "bound": max(sample, verify, train),
                     "sync_floor": sample + max(_known_at([(0.0, e) for _, e in finished], trace.slots)) + train,
                     "stream_floor": _stream_floor(finished, trace)})
    return {k: float(np.mean([r[k] for r in rows[1:]])) for k in rows[0]}


def _known_at(finished: list[tuple[float, float | None]], slots: int) -> list[float]:
    """When each answer's result is known if it starts verifying the moment its sequence ends (first come,
    first served on `slots` slots; a truncated answer is known when it ends)."""
    import heapq

    free = [0.0] * slots
    known = [0.0] * len(finished)
    for i in sorted(range(len(finished)), key=lambda i: finished[i][0]):
        t, seconds = finished[i]
        known[i] = t
        if seconds is not None:
            start = max(t, heapq.heappop(free))
            heapq.heappush(free, start + seconds)
            known[i] = start + seconds
    return known


def _stream_floor(finished: list[tuple[float, float | None]], trace: "Trace") -> float:
    """stream's least step time: each group goes to the learner (first come, first served) once its last
    result is known, then the swap (every group counted as trained: it has a reward spread in this trace)."""
    known = _known_at(finished, trace.slots)
    learner = 0.0
    for end in sorted(max(known[g * 8:(g + 1) * 8]) for g in range(len(known) // 8)):
        learner = max(learner, end) + trace.train_s_per_rollout * 8
    return learner + trace.swap_s


def steady(records: list[dict]) -> float:
    return float(np.mean([r["t_step"] for r in records[1:]]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--scale", type=float, default=800.0)
    parser.add_argument("--out", default="bench_runs/pipeline")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--prefetch-at", type=float, default=0.75,
                        help="the last row's async: start the next step once this share of sequences ended")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from inference.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny"))
    out = Path(args.out) / str(int(time.time()))
    trace = Trace(scale=args.scale)
    b = bounds(trace, args.steps, tokenizer)
    print(f"CP26 trace, {args.steps} steps of 8 x 8, 1 s simulated = 1/{args.scale:g} s; means over steps 1..; "
          f"simulated minutes per step")
    print(f"  per step from the trace: sample {b['sample'] / 60:.1f}, verify {b['verify'] / 60:.1f}, train "
          f"{b['train'] / 60:.1f}; bound max(...) {b['bound'] / 60:.1f}; stream floor {b['stream_floor'] / 60:.1f} "
          "(every answer verified the moment it ends, each group trained once its results are in, + swap)")
    sim = {}
    modes = {"sync": {}, "stream": {}, "async": {}, f"async, prefetch_at={args.prefetch_at:g}":
             {"prefetch_at": args.prefetch_at}}
    for label, kw in modes.items():
        records = run_mode(out / "sim" / str(len(sim)), label.split(",")[0], args.steps, trace,
                           service=TraceService(trace, tokenizer), **kw)
        sim[label] = steady(records) * args.scale
    floors = {"sync": b["sync_floor"], "stream": b["stream_floor"], "async": b["bound"]}
    print("| pipeline | step (sim. min) | vs sync | bound max(sample, verify, train) | step / bound | "
          "the mode's floor | step / floor |")
    print("|---|---|---|---|---|---|---|")
    for pipeline, t in sim.items():
        floor = floors.get(pipeline)
        print(f"| {pipeline} | {t / 60:.1f} | {sim['sync'] / t:.2f}x | {b['bound'] / 60:.1f} | {t / b['bound']:.2f} "
              + (f"| {floor / 60:.1f} | {t / floor:.2f} |" if floor else "| - | - |"))
    result = {"trace": trace.__dict__, "bounds_s": b, "sim_step_s": sim}
    if not args.skip_real:
        result["real"] = real_run(out / "real", args.steps, tokenizer)
    (out / "result.json").write_text(json.dumps(result, indent=2))


def real_run(out: Path, steps: int, tokenizer) -> dict:
    """The tiny model (HF sampler, PEFT learner on these CPUs), 8 x 8 rollouts of 16 tokens, the same sleeping
    verifier (8 slots); then the simulation with this run's measured sample and train times, to compare."""
    from inference.hf_sampler import HFSampler
    from inference.models import resolve_model

    trace = Trace(scale=200.0)  # evaluations up to 1.5 s: comparable to the real sampling and training here
    sampler = HFSampler(str(resolve_model("tiny")))
    real, sim = {}, {}
    for pipeline in ("sync", "stream", "async"):
        records = run_mode(out, pipeline, steps, trace, engine=sampler, backend="local", sampler="hf",
                           max_tokens=16, learning_rate=1e-3, lora_rank=8, probe_every_swap=False,
                           env={"_target_": "bench.bench_pipeline.TraceEnv", "scale": trace.scale,
                                "complete": False})
        real[pipeline] = {"step_s": steady(records),
                          "sample_s": float(np.mean([r["t_sample"] for r in records[1:]])),
                          "train_s": float(np.mean([r["t_train"] + r["t_swap"] for r in records[1:]]))}
    measured = Trace(scale=trace.scale, fixed_sample_s=real["sync"]["sample_s"] * trace.scale, swap_s=0.0,
                     train_s_per_rollout=real["sync"]["train_s"] * trace.scale / 64)
    for pipeline in ("sync", "stream", "async"):
        records = run_mode(out / "sim", pipeline, steps, measured, service=TraceService(measured, tokenizer))
        sim[pipeline] = steady(records)
    print("real CPU run (tiny model, HF sampler, PEFT learner, sleeping verifier with 8 slots) vs the simulation "
          "given the real run's sync sample and train times; wall s per step:")
    print("| pipeline | real step (s) | real vs sync | simulated step (s) | simulated vs sync |")
    print("|---|---|---|---|---|")
    for pipeline, r in real.items():
        print(f"| {pipeline} | {r['step_s']:.2f} | {real['sync']['step_s'] / r['step_s']:.2f}x | {sim[pipeline]:.2f} "
              f"| {sim['sync'] / sim[pipeline]:.2f}x |")
    return {"real": real, "sim_with_measured_times": sim}


if __name__ == "__main__":
    main()
