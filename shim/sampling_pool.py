"""One inference engine shared by every sampling session: it serves one adapter at a time, so each request
first makes its session's weights the loaded adapter (a fresh version number per load, because the samplers
retire older versions and vLLM caches adapters by id). Requests are serialised by one lock.

Concurrent sample requests for the same target with the same parameters (seeds aside) are coalesced into one
engine call, as a client that sends G groups at once (the TTT loop, tinker-cookbook) would want: vLLM then
batches all G x K sequences instead of running G calls one after another. Each request keeps its own seed,
and each gets its answer the moment its own sequences end (samplers that report per prompt: ours do), not
when the engine call's longest sequence does: pipeline=stream verifies an answer while longer ones decode.
"""

from __future__ import annotations

import inspect
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Sequence

from inference.types import SampledSequence, SamplingParams

SETTLE_S = 0.005  # a quiet gap this long ends the wait for more requests to join a batch
SETTLE_MAX_S = 0.05


@dataclass
class SamplingTarget:
    """What a sampling session samples from: the base model (adapter_dir None) or a PEFT adapter dir.

    `stamp` changes whenever the dir's contents are rewritten (inflight targets, overwritten checkpoints),
    which forces a reload."""
    adapter_dir: str | None
    stamp: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def key(self) -> tuple[str | None, int]:
        return self.adapter_dir, self.stamp


@dataclass(eq=False)
class _Request:
    target: SamplingTarget
    prompt: list[int]
    num_samples: int
    params: SamplingParams
    prompt_logprobs: bool = False
    future: Future = field(default_factory=Future)  # -> (sequences, prompt logprobs or None)

    def joins(self, other: "_Request") -> bool:
        return (self.target is other.target and self.num_samples == other.num_samples
                and not self.prompt_logprobs and not other.prompt_logprobs
                and replace(self.params, seed=None) == replace(other.params, seed=None))


class SamplingPool:
    def __init__(self, sampler):
        self.sampler = sampler
        self._streams = "on_result" in inspect.signature(sampler.sample).parameters
        self.max_model_len = getattr(sampler, "max_model_len", None)
        self._lock = threading.Lock()  # the engine
        self._queued: list[_Request] = []
        self._queue_lock = threading.Lock()
        self._runner: threading.Thread | None = None  # makes the engine calls while requests are queued
        self._last_arrival = 0.0  # time.monotonic() of the newest submit
        self.engine_calls = 0  # sampler.sample calls made (coalescing shows as fewer calls than requests)
        self._loaded_key: tuple[str | None, int] | None = None
        self._version = 0

    def _activate(self, target: SamplingTarget) -> int | None:
        """Load `target`'s adapter unless it is already loaded; the sampler version to sample with."""
        if target.adapter_dir is None:
            return None
        with target.lock:  # the target's dir is not rewritten while it loads
            key = target.key()
            if key != self._loaded_key:
                self._version += 1
                self.sampler.load_adapter(self._version, target.adapter_dir)
                self._loaded_key = key
        return self._version

    def default_max_tokens(self, prompt_len: int) -> int:
        """SamplingParams.max_tokens=None: the rest of the context window."""
        if self.max_model_len is None:
            raise ValueError("sampling_params.max_tokens is required by this sampler")
        return max(1, self.max_model_len - prompt_len)

    def sample(self, target: SamplingTarget, prompt: Sequence[int], num_samples: int, params: SamplingParams,
               prompt_logprobs: bool) -> tuple[list[SampledSequence], list[float | None] | None]:
        return self.submit(target, prompt, num_samples, params, prompt_logprobs).result()

    def submit(self, target: SamplingTarget, prompt: Sequence[int], num_samples: int, params: SamplingParams,
               prompt_logprobs: bool = False) -> Future:
        """Queue one request; its future holds (sequences, prompt logprobs or None). No thread waits per
        request: one runner thread makes the engine calls while requests are queued, each call batching every
        queued request that joins the oldest, and answers each the moment its own sequences end."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not prompt:
            raise ValueError("prompt is empty")
        request = _Request(target, list(prompt), num_samples, params, prompt_logprobs)
        with self._queue_lock:
            self._queued.append(request)
            self._last_arrival = time.monotonic()
            if self._runner is None:
                # not a daemon: a request is answered while its engine call may still finish other rows, and
                # the interpreter must not tear torch down under that call at exit (an abort: "terminate
                # called without an active exception"). It ends when the queue is empty; a sampler's close()
                # ends a call in flight.
                self._runner = threading.Thread(target=self._run_queue, name="sampling-engine")
                self._runner.start()
        return request.future

    def _run_queue(self) -> None:
        while True:
            self._settle()
            with self._queue_lock:
                if not self._queued:
                    self._runner = None
                    return
                leader = self._queued[0]
                batch = [r for r in self._queued if r is leader or r.joins(leader)]
                self._queued = [r for r in self._queued if not any(r is b for b in batch)]
            with self._lock:
                self._run(batch)

    def _settle(self) -> None:
        """Requests sent together (G x K sequences from one loop step) reach the pool over a few milliseconds:
        wait until SETTLE_S has passed since the newest arrival (at most SETTLE_MAX_S in all), so that the first
        does not run alone and leave the rest for a second engine call. The quiet gap counts from the arrival
        itself, not from when the runner noticed it: a request 1 ms behind the first adds 1 ms, not SETTLE_S."""
        deadline = time.monotonic() + SETTLE_MAX_S
        while True:
            with self._queue_lock:
                quiet_at = self._last_arrival + SETTLE_S
            wake = min(quiet_at, deadline)
            now = time.monotonic()
            if now >= wake:
                return
            time.sleep(wake - now)

    def _run(self, batch: list[_Request]) -> None:
        """One engine call for `batch` (the engine lock held)."""
        leader = batch[0]
        try:
            version = self._activate(leader.target)
            self.engine_calls += 1
            if leader.prompt_logprobs:  # alone in its call
                seqs = self.sampler.sample([leader.prompt], leader.num_samples, leader.params, [leader.params.seed],
                                           version=version)[0]
                _answer(leader, (seqs, self.sampler.compute_logprobs(leader.prompt, version=version)))
                return
            stream = {"on_result": lambda p, seqs: _answer(batch[p], (seqs, None))} if self._streams else {}
            groups = self.sampler.sample([r.prompt for r in batch], leader.num_samples, leader.params,
                                         [r.params.seed for r in batch], version=version, **stream)
            for r, seqs in zip(batch, groups):
                _answer(r, (seqs, None))
        except BaseException as e:  # every request of the batch not yet answered gets the engine's error
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(e)

    def compute_logprobs(self, target: SamplingTarget, tokens: Sequence[int]) -> list[float | None]:
        with self._lock:
            version = self._activate(target)
            return self.sampler.compute_logprobs(list(tokens), version=version)


def _answer(request: _Request, result) -> None:
    if not request.future.done():
        request.future.set_result(result)
