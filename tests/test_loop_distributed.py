"""The loop under `accelerate launch` with DeepSpeed ZeRO-2 on 2 CPU processes (gloo): rank 0 samples and
verifies, every rank trains (rank 0's learner calls are replayed on rank 1), and after 2 steps both ranks hold
the same weights; the first step's loss equals a single-process run's (gradients summed over the ranks)."""

import os
import subprocess
import sys
import json
from pathlib import Path

from trainer.config import compose
from trainer.loop import run
from trainer.report import read_jsonl

REPO = Path(__file__).resolve().parents[1]
ARGS = ["+experiment=demo", "steps=2", "groups=2", "group_size=4", "sampler=hf", "verifier_backend=local",
        "wandb_mode=disabled", "progress=false"]


def test_two_rank_loop_agrees_with_itself_and_with_one_process(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "TORCH_EXTENSIONS_DIR": os.environ.get(
               "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "ttt" / "torch_extensions"))}
    out = tmp_path / "two_ranks"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/zero2_cpu.yaml",
           "-m", "trainer.cli", "train", *ARGS, f"out={out}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks["world_size"] == 2 and ranks["agree"]
    assert ranks["weights_hash"][0] == ranks["weights_hash"][1] and len(ranks["weights_hash"][0]) == 1
    two = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in two] == [0, 1] and all(r["mismatch_max"] < 1e-4 for r in two)
    assert proc.stdout.count("ttt train:") == 1  # only rank 0 speaks

    one = run(compose([*ARGS, f"out={tmp_path / 'one_rank'}"]), log=lambda *_: None)
    assert two[0]["reward_mean"] == one[0]["reward_mean"]  # the same samples from the same v0
    assert abs(two[0]["loss"] - one[0]["loss"]) <= 1e-5 * max(1.0, abs(one[0]["loss"]))
