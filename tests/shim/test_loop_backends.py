"""The same seeded TTT loop with backend=local (in-process client) and backend=tinker (the official SDK
against `ttt serve`): equal samples, rewards, losses, buffers and trained weights."""

from pathlib import Path

from safetensors.torch import load_file

from tests.run_compare import REL_ADAM, assert_same_records, assert_same_tensors
from tests.shim.conftest import API_KEY
from trainer.checkpoint import read_checkpoint
from trainer.config import compose
from trainer.loop import run
from trainer.report import read_jsonl

# pipeline=sync: one request per group. stream's single-sequence requests reach the engine as they come, and on
# a loaded machine one run may batch them in two engine calls where the other used one; that changes the last
# bits of the sampled logprobs, Adam amplifies it in the weights, and a token can flip a step later. This test is
# about the two backends, so it keeps the batching fixed; stream vs sync is tests/test_pipeline.py's.
ARGS = ["+experiment=demo", "steps=3", "groups=2", "group_size=4", "max_tokens=8", "seed=5", "pipeline=sync",
        "verifier_backend=local", "wandb_mode=disabled", "progress=false"]



def test_loop_on_local_and_on_ttt_serve_gives_equal_results(tiny_model_path, hf_server, hf_engine, tmp_path):
    from inference.hf_sampler import HFSampler

    local = run(compose([*ARGS, f"out={tmp_path / 'local'}", "sampler=hf"]), sampler=HFSampler(tiny_model_path),
                log=lambda *_: None)
    served = run(compose([*ARGS, f"out={tmp_path / 'served'}", "backend=tinker", f"base_url={hf_server.url}",
                          f"api_key={API_KEY}"]), log=lambda *_: None)
    assert len(local) == len(served) == 3
    assert_same_records(local, served)  # floats to rounding: see tests/run_compare.py
    def texts(run_dir):  # the log is in verification-finish order
        return [r["text"] for r in sorted(read_jsonl(run_dir / "rollouts.jsonl"), key=lambda r: (r["step"], r["index"]))]

    assert texts(tmp_path / "local") == texts(tmp_path / "served")
    state_local, state_served = read_checkpoint(tmp_path / "local"), read_checkpoint(tmp_path / "served")
    assert state_local["buffers"] == state_served["buffers"] and state_local["best"] == state_served["best"]
    assert state_served["training_state"].startswith("tinker://") and state_served["local_training_dir"] is None
    served_dir = hf_engine.store.parse(state_served["training_state"]).directory
    for name in ("adapter/adapter_model.safetensors", "state.safetensors"):
        a = load_file(str(Path(state_local["local_training_dir"]) / name))
        b = load_file(str(served_dir / name))
        assert_same_tensors(a, b, name, REL_ADAM)  # which requests share an engine call differs run to run
