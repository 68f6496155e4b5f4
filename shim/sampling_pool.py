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
from contextlib import contextmanager
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


@dataclass
class _Request:
    target: SamplingTarget
    prompt: list[int]
    num_samples: int
    params: SamplingParams
    done: threading.Event = field(default_factory=threading.Event)
    result: list[SampledSequence] | None = None
    error: BaseException | None = None

    def joins(self, other: "_Request") -> bool:
        return (self.target is other.target and self.num_samples == other.num_samples
                and replace(self.params, seed=None) == replace(other.params, seed=None))


class SamplingPool:
    def __init__(self, sampler):
        self.sampler = sampler
        self._streams = "on_result" in inspect.signature(sampler.sample).parameters
        self.max_model_len = getattr(sampler, "max_model_len", None)
        self._lock = threading.Lock()  # the engine
        self._changed = threading.Condition()  # notified when a request is answered or the engine comes free
        self._queued: list[_Request] = []
        self._queue_lock = threading.Lock()
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
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not prompt:
            raise ValueError("prompt is empty")
        if prompt_logprobs:
            with self._engine():
                version = self._activate(target)
                self.engine_calls += 1
                seqs = self.sampler.sample([list(prompt)], num_samples, params, [params.seed], version=version)[0]
                return seqs, self.sampler.compute_logprobs(list(prompt), version=version)
        request = _Request(target, list(prompt), num_samples, params)
        with self._queue_lock:
            self._queued.append(request)
        # wait for the answer, or for the engine to come free with nobody having taken this request: then lead
        # a batch, run on its own thread, which frees the engine when the call ends. Nobody blocks on the
        # engine: a request in a running batch is answered when its own sequences end, the leader's too.
        while not request.done.is_set():
            held = False
            with self._changed:
                while not request.done.is_set():
                    if self._lock.acquire(blocking=False):
                        held = True
                        break
                    self._changed.wait(1.0)  # woken by an answer or a freed engine; the timeout: a safety net
            if held and request.done.is_set():  # answered by the call that freed the engine
                self._free_engine()
            elif held:
                self._settle()
                threading.Thread(target=self._run, args=(self._take_batch(request),), daemon=True,
                                 name="sampling-engine").start()
        if request.error is not None:
            raise request.error
        return request.result, None

    def _settle(self) -> None:
        """Requests sent together (G groups from one loop step) reach the pool over a few milliseconds, on
        different threads: wait until no new one has arrived for SETTLE_S (at most SETTLE_MAX_S), so that
        the first does not run alone and leave the rest for a second engine call."""
        deadline = time.monotonic() + SETTLE_MAX_S
        seen = len(self._queued)
        while time.monotonic() < deadline:
            time.sleep(SETTLE_S)
            with self._queue_lock:
                now = len(self._queued)
            if now == seen:
                return
            seen = now

    def _take_batch(self, leader: _Request) -> list[_Request]:
        with self._queue_lock:
            batch = [r for r in self._queued if r is leader or r.joins(leader)]
            self._queued = [r for r in self._queued if r not in batch]
        return batch

    def _run(self, batch: list[_Request]) -> None:
        """One engine call for `batch`, on the engine lock its leader acquired; frees it when done."""
        leader = batch[0]
        try:
            version = self._activate(leader.target)
            self.engine_calls += 1
            stream = {"on_result": lambda p, seqs: self._deliver(batch[p], seqs)} if self._streams else {}
            groups = self.sampler.sample([r.prompt for r in batch], leader.num_samples, leader.params,
                                         [r.params.seed for r in batch], version=version, **stream)
            for r, seqs in zip(batch, groups):
                r.result = seqs
        except BaseException as e:  # every request of the batch not yet answered gets the engine's error
            for r in batch:
                if not r.done.is_set():
                    r.error = e
        finally:
            for r in batch:
                r.done.set()
            self._free_engine()  # after the answers: a thread that finds the engine free finds its request done

    @contextmanager
    def _engine(self):
        with self._lock:
            yield
        self._notify()

    def _free_engine(self) -> None:
        self._lock.release()
        self._notify()

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _deliver(self, request: _Request, seqs: list[SampledSequence]) -> None:
        request.result = seqs
        request.done.set()
        self._notify()

    def compute_logprobs(self, target: SamplingTarget, tokens: Sequence[int]) -> list[float | None]:
        with self._engine():
            version = self._activate(target)
            return self.sampler.compute_logprobs(list(tokens), version=version)
