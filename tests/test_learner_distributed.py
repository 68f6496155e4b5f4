"""Two CPU processes under `accelerate launch` with DeepSpeed ZeRO (gloo): parameters identical on both ranks,
losses and gradient norms equal to a single-process run of the same schedule (so gradients are summed over
ranks, Tinker's sum reduction), save_state/load_state bit-exact under ZeRO, and only rank 0 wrote files.

The first launch on a machine JIT-builds DeepSpeed's shm op (~30 s); TORCH_EXTENSIONS_DIR keeps it cached.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer import ds_check
from trainer.learner import LoRALearner, LoraSpec

REPO = Path(__file__).resolve().parents[1]


def launch(stage: int, model: str, out: Path) -> list[dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "TORCH_EXTENSIONS_DIR": os.environ.get(
               "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "ttt" / "torch_extensions"))}
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", f"configs/accelerate/zero{stage}_cpu.yaml",
           "-m", "trainer.ds_check", "--model", model, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("DS_CHECK ")]
    assert proc.returncode == 0 and len(lines) == 1, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(lines[0].split(" ", 1)[1])  # rank 0 gathered every rank's report


def _single(tiny_model_path, out, prefix_sharing):
    learner = LoRALearner(tiny_model_path, LoraSpec(rank=4, seed=7), micro_batch_tokens=24, use_deepspeed=False,
                          prefix_sharing=prefix_sharing)
    return ds_check.run_schedule(learner, out), out


@pytest.fixture(scope="module")
def single_process(tiny_model_path, tmp_path_factory):
    """The same schedule in this process, without DeepSpeed, with shared-prefix passes as ZeRO-2 runs them
    (ds_check's datums share a 20-token prompt; each rank gets whole groups where it can)."""
    return _single(tiny_model_path, tmp_path_factory.mktemp("single"), prefix_sharing=None)


@pytest.fixture(scope="module")
def single_process_plain(tiny_model_path, tmp_path_factory):
    """The same with plain passes, as ZeRO-3 runs them (no chunked lm_head there, so no prefix sharing)."""
    return _single(tiny_model_path, tmp_path_factory.mktemp("single_plain"), prefix_sharing=False)


def close(a: float, b: float, rel: float = 1e-4) -> bool:
    """fp32 rounding: the loss sums terms of both signs (the advantages alternate), so the error of another
    summation order (shards, micro-batches, ZeRO-3 gathers) is relative to the terms, not to the small total:
    ZeRO-3 and one process differ by 2e-5 of the loss here."""
    return abs(a - b) <= rel * max(abs(a), abs(b), 1.0)


def check_against_single_process(reports, single_process, out, tiny_model_path):
    from safetensors.torch import load_file

    single, single_out = single_process
    rank0, rank1 = reports
    assert (rank0["rank"], rank1["rank"], rank0["world_size"]) == (0, 1, 2)
    assert rank0["backend"] == rank1["backend"] == "gloo"
    assert rank0["hash"] == rank1["hash"]  # the same parameters on both ranks
    assert rank0["redo_hash"] == rank0["hash"] == rank1["redo_hash"]  # load_state -> same step: bit-exact
    assert rank0["redo"] == rank0["records"][-1]
    for ours, theirs in zip(rank0["records"], single["records"]):
        for key in ("loss", "grad_norm", "logprobs_sum"):
            assert close(ours[key], theirs[key]), (key, ours, theirs)

    assert rank1["writes"] == []  # only rank 0 writes checkpoints
    assert {w.split(":")[0] for w in rank0["writes"]} == {"state", "adapter"}
    distributed_adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    single_adapter = load_file(str(single_out / "adapter" / "adapter_model.safetensors"))
    assert distributed_adapter.keys() == single_adapter.keys()
    for k, v in single_adapter.items():
        assert float((distributed_adapter[k] - v).norm()) <= 1e-4 * float(v.norm()) + 1e-6, k

    # a state written under ZeRO loads into a single process (one format for both)
    learner = LoRALearner(tiny_model_path, LoraSpec(rank=4, seed=0), use_deepspeed=False)
    learner.load_state(str(out / "state"))
    saved = load_file(str(out / "state" / "state.safetensors"))
    assert learner.steps == ds_check.SAVE_AFTER
    assert all(torch.equal(p.detach(), saved[f"param/{n}"]) for n, p in learner.named_params)


def test_zero2_two_ranks_match_a_single_process(tiny_model_path, single_process, tmp_path):
    reports = launch(2, tiny_model_path, tmp_path)
    assert reports[0]["zero_stage"] == 2
    check_against_single_process(reports, single_process, tmp_path, tiny_model_path)


@pytest.mark.slow
def test_zero3_two_ranks_match_a_single_process(tiny_model_path, single_process_plain, tmp_path):
    reports = launch(3, tiny_model_path, tmp_path)
    assert reports[0]["zero_stage"] == 3
    check_against_single_process(reports, single_process_plain, tmp_path, tiny_model_path)
