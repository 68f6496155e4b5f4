"""tinker-cookbook 0.6.1's minimal supervised loop recipe (sl_loop) trains 2 steps against `ttt serve`; its
checkpoints (a TTL'd one at step 1, the final one without TTL) are then listed by the SDK's RestClient."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tinker

from tests.shim.conftest import API_KEY

pytest.importorskip("tinker_cookbook", reason="tinker-cookbook 0.6.1 is not installed (see requirements/cpu.lock)")


def test_sl_loop_recipe_trains_two_steps(hf_server, tiny_model_path, tmp_path):
    env = {**os.environ, "TINKER_API_KEY": API_KEY, "TINKER_TELEMETRY": "0", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("cookbook_sl_loop_driver.py")),
                           hf_server.url, tiny_model_path, str(tmp_path / "run")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "train_mean_nll" in m] == [0, 1]
    records = [json.loads(line) for line in (tmp_path / "run" / "checkpoints.jsonl").read_text().splitlines()]
    final = records[-1]
    assert final["name"] == "final" and final["state_path"].endswith("/weights/final")
    run_id = final["state_path"][len("tinker://"):].split("/")[0]
    listed = {c.checkpoint_id: c for c in tinker.RestClient(base_url=hf_server.url, api_key=API_KEY)
              .list_checkpoints(run_id).result().checkpoints}
    assert listed["weights/000001"].expires_at is not None and listed["weights/final"].expires_at is None
    assert "sampler_weights/final" in listed
