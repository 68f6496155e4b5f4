"""`ttt` as a user runs it: bad input ends in exactly one clear error line, before anything heavy starts."""

import os
import subprocess
import sys
from pathlib import Path

TTT = str(Path(sys.executable).with_name("ttt"))


def _ttt(*args, cwd=None):
    env = {**os.environ, "TTT_DEBUG": ""}
    return subprocess.run([TTT, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ttt: error: "), proc.stderr
    return lines[0]


def test_unknown_model_path(tmp_path):
    line = _one_error_line(_ttt("demo", "--model", "/no/such/model", "--out", str(tmp_path)))
    assert "model path /no/such/model does not exist" in line


def test_train_bad_configs_fail_before_anything_starts(tmp_path):
    out = tmp_path / "run"
    line = _one_error_line(_ttt("train", "env=nope", f"out={out}"))
    assert "unknown env 'nope'; choose one of" in line and "cp26" in line
    assert "group_size must be >= 1, got 0" in _one_error_line(_ttt("train", "group_size=0", f"out={out}"))
    line = _one_error_line(_ttt("train", "model=/no/such/model", f"out={out}"))
    assert "model path /no/such/model does not exist" in line
    assert "stepz" in _one_error_line(_ttt("train", "stepz=3", f"out={out}"))
    assert "unknown experiment 'nope'" in _one_error_line(_ttt("train", "+experiment=nope", f"out={out}"))
    assert "mode must be one of train, frozen" in _one_error_line(_ttt("train", "mode=sleep", f"out={out}"))
    assert "overrides are key=value" in _one_error_line(_ttt("train", "steps", f"out={out}"))
    assert not out.exists()  # nothing started, nothing written


def test_train_refuses_to_overwrite_a_run(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    line = _one_error_line(_ttt("train", f"out={tmp_path}", "sampler=hf", "verifier_backend=local"))
    assert "already holds a run: pass resume=true" in line


def test_serve_vllm_with_a_missing_model():
    line = _one_error_line(_ttt("serve-vllm", "--model", "/no/such/model"))
    assert "model path /no/such/model does not exist" in line


def test_eval_with_bad_overrides(tmp_path):
    assert "neither a run checkpoint nor a PEFT adapter dir" in _one_error_line(_ttt("eval", f"checkpoint={tmp_path}"))
    assert "key=value overrides" in _one_error_line(_ttt("eval", "checkpoint"))
    assert "bad eval override" in _one_error_line(_ttt("eval", "nope=1"))


def test_verify_through_the_console_script(tmp_path):
    assert _ttt("verify", "--help").stdout.startswith("usage: ttt verify")
    construction = tmp_path / "flat.json"
    construction.write_text('{"heights": [1, 1, 1, 1]}')
    proc = _ttt("verify", "--env", "ac1", str(construction))
    assert proc.returncode == 0, proc.stderr
    import json

    record = json.loads(proc.stdout)
    assert record["status"] == "ok" and abs(record["score"] - 2.0) < 1e-12  # a flat step function has C1 = 2


def test_demo_task_needs_real(tmp_path):
    line = _one_error_line(_ttt("demo", "--task", "cp", "--out", str(tmp_path)))
    assert "--task picks the real demo's task: pass it with --real" in line


def test_real_demo_tasks_compose_their_experiments():
    import argparse

    from trainer.cli import _demo_overrides
    from trainer.config import compose

    def cfg(*argv):
        ns = argparse.Namespace(real=True, task=None, out=None, steps=None, seed=None, model=None, sampler=None,
                                resume=False)
        for flag, value in zip(argv[::2], argv[1::2]):
            setattr(ns, flag, value)
        return compose(_demo_overrides(ns))

    assert (cfg().env_name, cfg().sampler_args["adapter_mode"]) == ("ac1_direct", "merged")
    assert (cfg("task", "cp").env_name, cfg("task", "cp").out) == ("cp_direct", "runs/demo_real_cp")
    assert cfg("task", "code").env_name == "code_basics"
