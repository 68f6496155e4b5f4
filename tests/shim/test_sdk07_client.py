"""The official SDK 0.7.0 (pinned by TTT-Discover; all-JSON wire protocol) in its own virtualenv, against
`ttt serve`: the same numbers as the in-process backend for the same calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tinker import types

from shim import make_service_client
from tests.shim.conftest import API_KEY
from tests.shim.helpers import assert_close

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tinker07_python() -> str:
    try:
        done = subprocess.run(["bash", str(ROOT / "scripts" / "setup_tinker07.sh")], cwd=ROOT, capture_output=True,
                              text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"could not create the tinker 0.7.0 virtualenv: {exc}")
    if done.returncode != 0:
        pytest.skip(f"could not create the tinker 0.7.0 virtualenv (no network?): {done.stderr[-500:]}")
    return str(ROOT / done.stdout.strip().splitlines()[-1])


def test_sdk_070_runs_against_the_server_and_matches_local(tinker07_python, hf_server, hf_engine):
    env = {**os.environ, "TINKER_BASE_URL": hf_server.url, "TINKER_API_KEY": API_KEY, "TINKER_TELEMETRY": "0",
           "PYTHONPATH": ""}
    done = subprocess.run([tinker07_python, str(Path(__file__).with_name("sdk07_client_script.py"))], env=env,
                          capture_output=True, text=True, timeout=240, cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    served = json.loads(done.stdout)

    prompt, completion = [5, 17, 42, 9, 101, 33], [7, 88, 13, 250]
    seq, n_prompt = prompt + completion, len(prompt) - 1
    datum = types.Datum(model_input=types.ModelInput.from_ints(seq[:-1]), loss_fn_inputs={
        "target_tokens": seq[1:], "weights": [0.0] * n_prompt + [1.0] * len(completion)})
    rl = types.Datum(model_input=types.ModelInput.from_ints(seq[:-1]), loss_fn_inputs={
        "target_tokens": seq[1:], "logprobs": [0.0] * n_prompt + [-5.0] * len(completion),
        "advantages": [0.0] * n_prompt + [1.0] * len(completion)})
    local = make_service_client("local", engine=hf_engine)
    training = local.create_lora_training_client(base_model="tiny", rank=8, seed=3).result()
    fb = training.forward_backward([datum], "cross_entropy").result()
    assert_close(served["ce_loss"], fb.metrics["loss:sum"])
    assert_close(served["ce_logprobs"], fb.loss_fn_outputs[0]["logprobs"].tolist())
    # 0.7.0 sends only the AdamParams fields that were set: the server must fill in Tinker's defaults
    assert_close(served["grad_norm"], training.optim_step(types.AdamParams(learning_rate=1e-2)).result()
                 .metrics["grad_norm:mean"])
    assert_close(served["is_loss"], training.forward_backward([rl], "importance_sampling").result().metrics["loss:sum"])
    assert_close(served["grad_norm2"], training.optim_step(types.AdamParams(learning_rate=1e-2)).result()
                 .metrics["grad_norm:mean"])
    assert_close(served["fwd_logprobs"], training.forward([datum], "cross_entropy").result()
                 .loss_fn_outputs[0]["logprobs"].tolist())
    sampler = training.save_weights_and_get_sampling_client().result()
    resp = sampler.sample(types.ModelInput.from_ints(prompt), 2, types.SamplingParams(max_tokens=5, seed=7)).result()
    assert served["sample_tokens"] == [s.tokens for s in resp.sequences]
    assert_close(served["sample_logprobs"], [s.logprobs for s in resp.sequences])
    assert served["state_path"] == f"tinker://{served['model_id']}/weights/s07state"
    local.close()
