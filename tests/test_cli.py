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


def test_unreadable_config(tmp_path):
    line = _one_error_line(_ttt("demo", "--config", str(tmp_path / "missing.yaml")))
    assert "cannot read config" in line and "missing.yaml" in line


def test_config_with_unknown_field_or_bad_value(tmp_path):
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text("stepz: 3\n")
    assert "stepz" in _one_error_line(_ttt("demo", "--config", str(bad_key)))
    bad_value = tmp_path / "bad_value.yaml"
    bad_value.write_text("group_size: 0\n")
    assert "group_size must be >= 1" in _one_error_line(_ttt("demo", "--config", str(bad_value)))
    not_yaml = tmp_path / "not_yaml.yaml"
    not_yaml.write_text("a: [1, 2\n")
    assert "not valid YAML" in _one_error_line(_ttt("demo", "--config", str(not_yaml)))


def test_serve_vllm_with_a_missing_model():
    line = _one_error_line(_ttt("serve-vllm", "--model", "/no/such/model"))
    assert "model path /no/such/model does not exist" in line


def test_eval_with_bad_overrides(tmp_path):
    assert "not a PEFT adapter dir" in _one_error_line(_ttt("eval", f"checkpoint={tmp_path}"))
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
