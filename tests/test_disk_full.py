"""A full disk ends a run with one `ttt: error:` line naming the file and the fix; the last complete checkpoint
stays intact (never a partial one) and `resume=true` continues once there is space again.

Real disk-full: a 30 MB tmpfs (needs root, or CAP_SYS_ADMIN; skipped otherwise) filled up mid-run, holding the
checkpoints and the learner's state (out/checkpoints, out/tinker), or the append-only logs (rollouts.jsonl,
metrics.jsonl). Real `ttt train` subprocesses with the PEFT learner and the HF sampler."""

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.checkpoint import Checkpoints, no_space, no_space_message, read_checkpoint
from trainer.report import read_jsonl

TTT = str(Path(sys.executable).with_name("ttt"))
ARGS = ["+experiment=demo", "steps=50", "groups=2", "group_size=4", "max_tokens=8", "seed=3", "sampler=hf",
        "verifier_backend=local", "wandb_mode=disabled", "progress=false"]


@pytest.fixture()
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(disk)],
                                 capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command: cannot make a small disk to fill")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Take every free byte of `disk` (the run's next write that needs a new page fails with ENOSPC)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def _train(out: Path, *extra: str, args: list[str] = ARGS) -> subprocess.Popen:
    env = {**os.environ, "TTT_DEBUG": "", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([TTT, "train", *args, f"out={out}", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _fill_after_checkpoint(proc: subprocess.Popen, out: Path, disk: Path, step: int = 1,
                           timeout: float = 600.0) -> Path:
    """Once `step` is checkpointed, fill `disk`; the run is killed if that point is not reached."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if read_checkpoint(out)["step"] >= step:
                    return _fill(disk)
            except (OSError, ValueError):
                pass
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "timed out waiting for the checkpoint"
            time.sleep(0.05)
    except BaseException:
        proc.kill()
        raise


def _fails_with_one_line(proc: subprocess.Popen, *names: str) -> str:
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr and "Logging error" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("ttt: error:")]
    assert len(errors) == 1, stderr[-3000:]
    line = errors[0]
    print(line)
    assert line.startswith("ttt: error: no space left on device writing "), line
    assert any(name in line for name in names), line
    assert "free space" in line and "out=" in line and "resume=true" in line, line
    return line


def _intact_then_resumes(out: Path, filler: Path, line: str, args: list[str] = ARGS) -> None:
    state = read_checkpoint(out)  # the latest checkpoint is complete: its loop state and its training state
    assert f"(step {state['step']}, intact)" in line
    assert (Path(state["local_training_dir"]) / "state.safetensors").is_file()
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")], "partial checkpoint left"
    filler.unlink()
    resumed = _train(out, "resume=true", f"steps={state['step'] + 3}", args=args)
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-3000:]
    assert f"after step {state['step']}" in stdout
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl")]
    assert steps == list(range(state["step"] + 3)), steps  # every step logged once, none lost to the full disk
    rollouts = read_jsonl(out / "rollouts.jsonl")  # a line cut short by the full disk was repaired
    assert {r["step"] for r in rollouts} == set(range(state["step"] + 3))


def test_disk_full_while_checkpointing(small_disk, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoints", "tinker"):  # the checkpoint and the learner's state go to the small disk
        (small_disk / name).mkdir()
        (out / name).symlink_to(small_disk / name)
    proc = _train(out)
    filler = _fill_after_checkpoint(proc, out, small_disk)
    line = _fails_with_one_line(proc, str(out / "checkpoints"), str(out / "tinker"))
    _intact_then_resumes(out, filler, line)


@pytest.mark.parametrize("log", ["rollouts.jsonl", "metrics.jsonl"])
def test_disk_full_while_appending_a_log(small_disk, tmp_path, log):
    out = tmp_path / "run"
    out.mkdir()
    (out / log).symlink_to(small_disk / log)  # dangling until the run's first append creates it
    proc = _train(out)
    filler = _fill_after_checkpoint(proc, out, small_disk)
    line = _fails_with_one_line(proc, str(out / log))
    _intact_then_resumes(out, filler, line)


def test_disk_full_under_the_default_demo(small_disk):
    """`ttt train +experiment=demo` as a user runs it (vLLM, Ray verifiers, wandb offline) with its whole run
    dir on the small disk: wandb's own log file fails too, and still one line comes out."""
    args = ["+experiment=demo", "steps=50", "progress=false"]
    out = small_disk / "run"
    proc = _train(out, args=args)
    filler = _fill_after_checkpoint(proc, out, small_disk, step=2)
    line = _fails_with_one_line(proc, str(out))
    _intact_then_resumes(out, filler, line, args=args)


def test_a_checkpoint_that_does_not_fit_is_never_taken_as_the_latest(small_disk):
    checkpoints = Checkpoints(small_disk / "run")
    checkpoints.write(0, {"step": 0})
    filler = _fill(small_disk)
    with pytest.raises(OSError) as failed:
        checkpoints.write(1, {"step": 1, "buffers": ["x" * 100_000]})
    assert failed.value.errno == errno.ENOSPC and failed.value.filename.endswith("loop_state.json")
    assert checkpoints.latest() == {"step": 0}
    assert sorted(os.listdir(checkpoints.root)) == ["latest", "step_000000"]  # the partial one is gone
    filler.unlink()
    checkpoints.write(1, {"step": 1, "buffers": ["x" * 100_000]})
    assert checkpoints.latest()["step"] == 1


def test_the_full_disk_is_found_behind_the_errors_it_caused(tmp_path):
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("shutting down failed too")
    except RuntimeError as e:
        assert no_space(e).errno == errno.ENOSPC
    quoted = Exception('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                       'left on device" })')  # safetensors' own error type
    assert no_space(quoted) is quoted
    assert no_space(ValueError("bad config")) is None
    line = no_space_message(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.json")), tmp_path)
    assert line.startswith(f"no space left on device writing {tmp_path / 'x.json'}: ") and "no checkpoint" in line
