"""Exact resume: a seeded run killed with SIGKILL in the middle of verification, then resumed, ends with the
same metrics, buffer, best and adapter + optimizer as an uninterrupted run, and loses no finished evaluation.
A SIGTERM (Slurm preemption) checkpoints, exits 143, and resumes the same way.

Real components: `ttt train` subprocesses, the PEFT learner, the HF sampler, the verifier pool."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.run_compare import REL_ADAM, assert_same_records, assert_same_tensors
from trainer.checkpoint import read_checkpoint
from trainer.report import read_jsonl

TTT = str(Path(sys.executable).with_name("ttt"))
ARGS = ["+experiment=demo", "steps=4", "groups=2", "group_size=4", "max_tokens=8", "seed=3", "sampler=hf",
        "verifier_backend=local", "wandb_mode=disabled", "env.verify_delay_s=0.25", "progress=false"]


def _train(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "TTT_DEBUG": ""}
    return subprocess.Popen([TTT, "train", *ARGS, f"out={out}", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc: subprocess.Popen) -> str:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    return stdout


def _wait_for(predicate, proc, timeout=240.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.02)


def _lines(path: Path, step: int) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.endswith("}") and f'"step": {step},' in line)



def _same_run(a: Path, b: Path, weights_rel: float = REL_ADAM) -> None:
    assert_same_records(read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl"))  # tests/run_compare.py
    state_a, state_b = read_checkpoint(a), read_checkpoint(b)
    for key in ("step", "version", "best", "buffers", "curriculum", "groups"):
        assert state_a[key] == state_b[key], key
    # numpy's generator drives every random choice of the loop (greedy epsilon, random initial states). torch's
    # global generator is saved too, but PEFT draws from it when an adapter is loaded (init before the saved
    # weights overwrite it), so its position depends on how many loads a process did, not on the results.
    assert state_a["rng"]["numpy"] == state_b["rng"]["numpy"]
    for name in ("adapter/adapter_model.safetensors", "state.safetensors"):  # adapter, and Adam's moments
        ta = load_file(str(Path(state_a["local_training_dir"]) / name))
        tb = load_file(str(Path(state_b["local_training_dir"]) / name))
        assert_same_tensors(ta, tb, name, weights_rel)
    def rollouts(run):  # each rollout exactly once, equal but for its verification wall time
        records = [{k: v for k, v in r.items() if k != "wall_s"} for r in read_jsonl(run / "rollouts.jsonl")]
        return sorted(records, key=lambda r: (r["step"], r["index"]))

    assert rollouts(a) == rollouts(b)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    _finish(_train(out))
    return out


def test_sigkill_mid_verification_then_resume_equals_an_uninterrupted_run(uninterrupted, tmp_path):
    proc = _train(tmp_path)
    rollouts = tmp_path / "rollouts.jsonl"
    _wait_for(lambda: _lines(rollouts, 2) >= 2, proc)  # step 2 is being verified (8 rollouts, 0.25 s each)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [r for r in read_jsonl(rollouts) if r["step"] == 2]
    assert 2 <= len(before) < 8, "killed in the middle of step 2's verification"
    assert read_checkpoint(tmp_path)["step"] == 1

    out = _finish(_train(tmp_path, "resume=true"))
    assert "resumed" in out and "after step 1" in out
    after = [r for r in read_jsonl(rollouts) if r["step"] == 2]
    assert after[: len(before)] == before  # the evaluations finished before the kill were kept, not redone
    _same_run(uninterrupted, tmp_path)


def test_sigterm_checkpoints_exits_143_and_resumes_exactly(uninterrupted, tmp_path):
    proc = _train(tmp_path)
    _wait_for(lambda: _lines(tmp_path / "rollouts.jsonl", 1) >= 1, proc)  # inside step 1
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert "ttt: stopped: SIGTERM" in stderr and "resume=true" in stderr
    assert read_checkpoint(tmp_path)["step"] in (0, 1)
    _finish(_train(tmp_path, "resume=true"))
    _same_run(uninterrupted, tmp_path)
    assert json.loads((tmp_path / "best.json").read_text()) == json.loads((uninterrupted / "best.json").read_text())
