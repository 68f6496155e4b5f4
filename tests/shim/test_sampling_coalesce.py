"""Concurrent sample requests for the same weights and parameters become one engine call, and each keeps its
own seed: the results equal the same requests sent one at a time (tokens exactly; logprobs up to the float
rounding of a bigger batched matmul)."""

import time

import numpy as np
import pytest

from tinker import types

from shim.factory import make_service_client


def test_concurrent_requests_are_coalesced_and_keep_their_seeds(hf_engine):
    service = make_service_client("local", engine=hf_engine)
    training = service.create_lora_training_client(base_model="tiny", rank=4, seed=1).result()
    sampling = training.save_weights_and_get_sampling_client().result()
    prompts = [types.ModelInput.from_ints([1, 87, 85, 71 + g]) for g in range(8)]

    def params(g):
        return types.SamplingParams(max_tokens=12, seed=100 + g, temperature=1.0)

    one_by_one = [sampling.sample(p, 4, params(g)).result() for g, p in enumerate(prompts)]
    calls = hf_engine.pool.engine_calls
    futures = [sampling.sample(p, 4, params(g)) for g, p in enumerate(prompts)]  # all in flight at once
    together = [f.result() for f in futures]
    assert hf_engine.pool.engine_calls - calls <= 4  # 8 requests, a handful of engine calls
    for a, b in zip(one_by_one, together):
        assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
        for x, y in zip(a.sequences, b.sequences):
            np.testing.assert_allclose(x.logprobs, y.logprobs, rtol=0, atol=1e-4)
    mixed = [sampling.sample(prompts[0], 2, params(0)), sampling.sample(prompts[1], 3, params(1))]
    assert [len(f.result().sequences) for f in mixed] == [2, 3]  # different n: never merged
    service.close()


class _StagedSampler:
    """Answers prompt 0 at once, then holds the engine call until the test lets it finish."""

    def __init__(self):
        import threading

        self.release = threading.Event()

    def sample(self, prompts_P, num_samples, params, seeds_P=None, version="current", on_result=None):
        from inference.types import SampledSequence

        groups = [[SampledSequence(tokens=[p], logprobs=[0.0], stop_reason="stop", adapter_version=version,
                                   text="")] * num_samples for p in range(len(prompts_P))]
        on_result(0, groups[0])
        assert self.release.wait(10)
        for p in range(1, len(groups)):
            on_result(p, groups[p])
        return groups


def test_a_request_is_answered_when_its_own_sequences_end_not_the_whole_call():
    """pipeline=stream asks for each sequence on its own: the pool must hand back each request's answer the
    moment the sampler reports it, while the engine call (and the batch's longest sequence) goes on."""
    import threading

    from inference.types import SamplingParams
    from shim.sampling_pool import SamplingPool, SamplingTarget

    sampler = _StagedSampler()
    pool, target = SamplingPool(sampler), SamplingTarget(None)
    answers: dict[int, float] = {}

    def ask(i):
        pool.sample(target, [1, 2, 3 + i], 1, SamplingParams(max_tokens=4, seed=i), prompt_logprobs=False)
        answers[i] = time.monotonic()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(answers) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(answers) == 1 and pool.engine_calls == 1  # one answered, the call still running
    sampler.release.set()
    for t in threads:
        t.join(10)
    assert len(answers) == 3 and pool.engine_calls == 1


def test_a_steps_single_sequence_requests_reach_the_engine_together(hf_engine, monkeypatch):
    """pipeline=stream sends G x K single requests; none waits on a thread of its own, so all of them reach the
    pool and share one engine call (a client thread pool of 32 used to split 64 into two calls)."""
    import shim.sampling_pool as sampling_pool

    monkeypatch.setattr(sampling_pool, "SETTLE_S", 0.2)  # a loaded machine must not split the burst
    service = make_service_client("local", engine=hf_engine)
    training = service.create_lora_training_client(base_model="tiny", rank=4, seed=2).result()
    sampling = training.save_weights_and_get_sampling_client().result()
    calls = hf_engine.pool.engine_calls
    futures = [sampling.sample(types.ModelInput.from_ints([1, 87, 85, 71 + i % 8]), 1,
                               types.SamplingParams(max_tokens=4, seed=1000 + i, temperature=1.0))
               for i in range(64)]
    assert all(len(f.result().sequences) == 1 for f in futures)
    assert hf_engine.pool.engine_calls - calls == 1
    service.close()


class _FakeClock:
    """time.monotonic / time.sleep for the pool's settle wait: sleeping advances the clock, and `on_sleep` may
    add arrivals while the pool sleeps."""

    def __init__(self, pool, on_sleep=None):
        self.now, self.pool, self.on_sleep, self.slept = 100.0, pool, on_sleep, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        start, self.now = self.now, self.now + seconds
        if self.on_sleep is not None:
            self.on_sleep(self, start)


def test_the_quiet_gap_counts_from_the_newest_arrival(monkeypatch):
    """Requests of one step reach the pool over a few ms (a served client sends them one HTTP request at a time).
    The batch waits until SETTLE_S after the newest arrival: a request 2 ms behind adds 2 ms, not a second full
    SETTLE_S; a stream that never pauses is cut at SETTLE_MAX_S."""
    import shim.sampling_pool as sampling_pool
    from shim.sampling_pool import SETTLE_MAX_S, SETTLE_S, SamplingPool

    pool = SamplingPool(_StagedSampler())

    def run_settle(last_arrival_ago: float, on_sleep=None) -> float:
        clock = _FakeClock(pool, on_sleep)
        monkeypatch.setattr(sampling_pool, "time", clock)
        pool._last_arrival = clock.now - last_arrival_ago
        start = clock.now
        pool._settle()
        return clock.now - start

    assert run_settle(0.0) == pytest.approx(SETTLE_S)  # alone: one quiet gap
    assert run_settle(0.001) == pytest.approx(SETTLE_S - 0.001)  # arrived 1 ms before the runner looked
    assert run_settle(1.0) == 0.0  # queued during the previous engine call: no wait

    def second_request_2ms_in(clock, sleep_start):
        if not getattr(clock, "added", False):
            clock.added, pool._last_arrival = True, sleep_start + 0.002

    assert run_settle(0.0, second_request_2ms_in) == pytest.approx(SETTLE_S + 0.002)

    def one_every_ms(clock, sleep_start):
        pool._last_arrival = clock.now - 0.0005  # a request arrived half a millisecond ago, every time

    assert run_settle(0.0, one_every_ms) == pytest.approx(SETTLE_MAX_S)
