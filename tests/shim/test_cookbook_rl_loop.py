"""tinker-cookbook 0.6.1's minimal RL loop recipe (loss importance_sampling) runs 2 steps against `ttt serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shim.conftest import API_KEY

pytest.importorskip("tinker_cookbook", reason="tinker-cookbook 0.6.1 is not installed (see requirements/cpu.lock)")


def test_rl_loop_recipe_trains_two_steps(hf_server, hf_engine, tiny_model_path, tmp_path):
    env = {**os.environ, "TINKER_API_KEY": API_KEY, "TINKER_TELEMETRY": "0", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    before = {m.model_id for m in hf_engine.models.all()}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("cookbook_rl_loop_driver.py")),
                           hf_server.url, tiny_model_path, str(tmp_path / "run")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["progress/batch"] for m in metrics] == [0, 1]
    assert all("grad_norm:mean" in m for m in metrics), metrics  # both steps trained (optim_step metrics)
    final = json.loads((tmp_path / "run" / "checkpoints.jsonl").read_text().splitlines()[-1])
    assert final["state_path"].startswith("tinker://") and "/weights/final" in final["state_path"]
    assert final["sampler_path"].endswith("/sampler_weights/final")
    new = [m for m in hf_engine.models.all() if m.model_id not in before]
    assert any(m.learner.steps == 2 for m in new) or not new  # the session may already be finished and freed
