"""pipeline=sync | stream | async on the real loop (HF sampler, PEFT learner, the verifier pool): stream is the
same run as sync; async samples each step while the previous one trains, records the staleness, and resumes
exactly after kill -9 in the middle of a step, with no evaluation redone or lost."""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time
from dataclasses import dataclass

import pytest

from envs.base import Env, State, VerifyResult
from envs.pool import VerifierPool
from tests.test_resume import _finish, _lines, _same_run, _train, _wait_for
from trainer.config import compose
from trainer.loop import run
from trainer.report import read_jsonl
from trainer.rollouts import group_seed

ARGS = ["+experiment=demo", "steps=3", "groups=2", "group_size=4", "max_tokens=8", "seed=3", "sampler=hf",
        "verifier_backend=local", "wandb_mode=disabled", "env.verify_delay_s=0.05", "progress=false"]
QUIET = {"log": lambda *_: None}


def _run(out, *overrides):
    return run(compose([*ARGS, f"out={out}", *overrides]), **QUIET)


def test_group_seeds_leave_room_for_each_sequence():
    """Sequence k of a group samples with group seed + k (vLLM's rule), so no two groups of a run may have
    seed ranges that overlap: that would give two groups of the same parent the same sample."""
    K = 256  # the largest group_size the config accepts
    for seed in range(3):
        seeds = sorted(group_seed(seed, step, g) for step in range(0, 16_000, 7) for g in range(0, 512, 3))
        assert all(b - a >= K for a, b in itertools.pairwise(seeds))
        assert seeds[-1] + 7919 * (K + 1) < 2**31  # the final phase's seeds stay in int32
    with pytest.raises(ValueError, match="at most 512 groups"):
        group_seed(0, 0, 512)


@pytest.mark.parametrize("two_phase", [False, True], ids=["one_phase", "two_phase"])
def test_stream_is_the_same_run_as_sync(tmp_path, two_phase):
    extra = ["thinking_budget=6", "final_budget=5", "prefill_text=' ... final answer:'"] if two_phase else []
    _run(tmp_path / "sync", "pipeline=sync", *extra)
    records = _run(tmp_path / "stream", "pipeline=stream", *extra)
    # stream sends each sequence as its own request, from its own thread: on a loaded machine they may reach
    # the engine in two calls instead of one, with other batch-mates (and padding) than sync's group requests,
    # so their sampled logprobs differ at fp32 rounding (~1e-6), and each group's forward_backward comes as its
    # evaluations end (gradients summed in another order); Adam amplifies that, so _same_run compares weights at
    # tests/run_compare.py's REL_ADAM.
    # Discrete results (tokens, rewards, buffer, best, every rollout) must still be equal.
    _same_run(tmp_path / "sync", tmp_path / "stream")
    assert all(r["staleness_max"] == 0 and r["mismatch_max"] < 1e-4 for r in records)


@pytest.mark.parametrize("prefetch_at", [1.0, 0.5])
def test_async_samples_the_next_step_while_this_one_trains(tmp_path, prefetch_at):
    records = _run(tmp_path, "pipeline=async", f"prefetch_at={prefetch_at}")
    assert [r["staleness_max"] for r in records] == [0, 1, 1]  # step n+1 sampled by the adapter of step n-1
    assert [r["adapter_version"] for r in records] == [1, 2, 3]
    assert records[0]["mismatch_max"] < 1e-4  # on-policy: the per-step proof of serving holds
    assert all("mismatch_max" not in r and r["stale_mismatch_mean"] > 0 for r in records[1:])
    assert all(r["probe_mismatch"] < 1e-4 for r in records)  # every swap is still proved on the probe
    rollouts = read_jsonl(tmp_path / "rollouts.jsonl")
    assert {(r["step"], r["version"]) for r in rollouts} == {(0, 0), (1, 0), (2, 1)}
    assert sorted((r["step"], r["index"]) for r in rollouts) == [(s, i) for s in range(3) for i in range(8)]


def test_async_sigkill_mid_step_then_resume_redoes_and_loses_nothing(tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    _finish(_train(uninterrupted, "pipeline=async"))
    out = tmp_path / "killed"
    proc = _train(out, "pipeline=async")
    rollouts = out / "rollouts.jsonl"
    _wait_for(lambda: _lines(rollouts, 2) >= 2, proc)  # step 2 verifying; step 3 already sampling
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_jsonl(rollouts)
    assert 2 <= sum(r["step"] == 2 for r in before) < 8 or any(r["step"] == 3 for r in before)
    stdout = _finish(_train(out, "pipeline=async", "resume=true"))
    assert "resumed" in stdout
    after = read_jsonl(rollouts)
    keys = [(r["step"], r["index"]) for r in after]
    assert sorted(keys) == [(s, i) for s in range(4) for i in range(8)]  # none redone, none lost
    assert after[: len(before)] == before
    _same_run(uninterrupted, out)


@dataclass
class SleepEnv(Env):
    """Verification takes as many seconds as the answer says."""

    def statement(self) -> str:
        return "sleep"

    def parse(self, completion):
        return completion

    def verify(self, answer, state):
        time.sleep(float(answer))
        return VerifyResult(status="ok", reward=float(answer))


@pytest.fixture()
def ray_pickles_this_module():
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    yield
    ray.shutdown()


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_a_slow_evaluation_blocks_only_itself(backend, request):
    if backend == "ray":
        request.getfixturevalue("ray_pickles_this_module")
    pool = VerifierPool(SleepEnv(), backend=backend, num_cpus=2)
    slow = pool.submit("3.0", State())  # one step's straggler
    time.sleep(0.2)
    t0 = time.monotonic()
    seen = []
    fast = [pool.submit("0.1", State(), on_result=lambda r: seen.append(r.reward)) for _ in range(6)]  # the next step's
    assert [f.result(timeout=60).reward for f in fast] == [0.1] * 6 and seen == [0.1] * 6
    assert time.monotonic() - t0 < 2.5 and not slow.done()  # through the other slot, while the slow one runs
    assert slow.result(timeout=60).reward == 3.0
    pool.close()


def test_async_prefetch_at_starts_the_next_step_before_the_stragglers_end(tmp_path, tiny_model_path):
    """prefetch_at=0.5: wait_sampled returns once half of the sequences have ended, while the others still
    decode; prefetch_at=1: only when all have."""
    import threading
    from concurrent.futures import Future
    from types import SimpleNamespace

    import numpy as np
    from tinker import types
    from transformers import AutoTokenizer

    from envs.toy_digits import ToyDigitsEnv
    from trainer.checkpoint import RolloutLog
    from trainer.pipeline import Pipeline, Plan
    from trainer.state_sampler import Node

    straggle = threading.Event()

    class Client:  # sequence k ends at once for k < 2, else when the test lets it
        def sample(self, prompt, num_samples, sampling_params):
            future: Future = Future()
            seq = types.SampledSequence(stop_reason="stop", sequence_id=str(sampling_params.seed),
                                        tokens_np=np.array([5, 6], np.int32),
                                        logprobs_np=np.array([-1.0, -1.0], np.float32))

            def answer():
                if (sampling_params.seed - seeds[0]) % 256 >= 2:
                    straggle.wait(30)
                future.set_result(types.SampleResponse(sequences=[seq], prompt_logprobs_np=None))
            threading.Thread(target=answer, daemon=True).start()
            return future

    env = ToyDigitsEnv()
    pool = SimpleNamespace(submit=lambda text, state, on_result: None)
    cfg = compose([*ARGS, f"out={tmp_path}", "pipeline=async", "group_size=4"])
    pipe = Pipeline(cfg, AutoTokenizer.from_pretrained(tiny_model_path), RolloutLog(tmp_path / "r.jsonl"), tmp_path)
    state = next(iter(env.initial_states(np.random.default_rng(0))))
    parents = [Node(id=g, parent_id=None, state=state, value=0.0, is_initial=True) for g in range(2)]
    seeds = [group_seed(cfg.seed, 0, 0)]
    batch = pipe.start(Plan(0, 0, parents, 0, None), SimpleNamespace(env=env, pool=pool),
                       SimpleNamespace(client=Client()))
    half = threading.Thread(target=batch.wait_sampled, args=(0.5,))
    half.start()
    half.join(10)
    assert not half.is_alive()  # 4 of 8 ended (k = 0, 1 of both groups): the next step may start
    everything = threading.Thread(target=batch.wait_sampled, args=(1.0,))
    everything.start()
    everything.join(0.5)
    assert everything.is_alive()  # the stragglers still decode
    straggle.set()
    everything.join(10)
    assert not everything.is_alive()
    assert [r.tokens for r in batch.sampled()] == [[5, 6]] * 8
