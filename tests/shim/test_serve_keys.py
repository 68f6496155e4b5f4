"""Several API keys on one `ttt serve`: each key sees only its own runs, sessions and checkpoints; another key's
ids and tinker:// paths are 404 (as if they did not exist); `ttt serve keys revoke` makes the next request 401."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import tinker

from tests.shim.helpers import sft_datum
from tests.shim.serve_process import ROOT


def keys_cli(db_path, *args) -> str:
    done = subprocess.run([sys.executable, "-c", "import sys; from shim.server import serve_main; "
                           "sys.exit(serve_main(sys.argv[1:]))", "keys", "--db", str(db_path), *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def post(server, endpoint, body: dict, key: str) -> int:
    req = urllib.request.Request(f"{server.url}/api/v1/{endpoint}", data=json.dumps(body).encode(), method="POST",
                                 headers={"X-API-Key": key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def refused(fn, status: int):
    t0 = time.monotonic()
    with pytest.raises(tinker.APIStatusError) as err:
        fn()
    assert err.value.status_code == status and time.monotonic() - t0 < 5.0  # answered, not retried


def test_two_keys_see_only_their_own_and_a_revoked_key_gets_401(hf_server):
    db_path = hf_server.db.path
    alice_id, alice = keys_cli(db_path, "add", "--name", "alice").split()
    bob_id, bob = keys_cli(db_path, "add", "--name", "bob").split()
    assert alice.startswith("tml-") and bob.startswith("tml-") and alice_id != bob_id
    made = {}
    for name, key in (("alice", alice), ("bob", bob)):
        service = tinker.ServiceClient(base_url=hf_server.url, api_key=key)
        training = service.create_lora_training_client(base_model="tiny", rank=8).result()
        training.forward_backward([sft_datum()], "cross_entropy").result()
        made[name] = (service, training, training.save_state("mine").result().path,
                      training.save_weights_for_sampler("mine").result().path)
    rest = {name: tinker.RestClient(base_url=hf_server.url, api_key=key) for name, key in (("alice", alice),
                                                                                           ("bob", bob))}
    for name, other in (("alice", "bob"), ("bob", "alice")):
        runs = [r.training_run_id for r in rest[name].list_training_runs().result().training_runs]
        assert runs == [made[name][1].model_id]
        assert rest[name].get_training_run(made[name][1].model_id).result().model_owner == name
        assert {c.tinker_path for c in rest[name].list_user_checkpoints().result().checkpoints} == set(made[name][2:])
        assert made[other][1].model_id.split(":train:")[0] not in rest[name].list_sessions().result().sessions

    # bob against alice's objects: every one is a 404, the same as an id that does not exist
    a_service, a_training, a_state, a_sampler = made["alice"]
    b_service, b_training = made["bob"][:2]
    refused(lambda: rest["bob"].get_training_run(a_training.model_id).result(), 404)
    refused(lambda: rest["bob"].list_checkpoints(a_training.model_id).result(), 404)
    refused(lambda: rest["bob"].get_weights_info_by_tinker_path(a_state).result(), 404)
    refused(lambda: rest["bob"].delete_checkpoint_from_tinker_path(a_state).result(), 404)
    refused(lambda: rest["bob"].publish_checkpoint_from_tinker_path(a_state).result(), 404)
    refused(lambda: rest["bob"].get_session(a_training.model_id.split(":train:")[0]).result(), 404)
    refused(lambda: b_service.create_sampling_client(model_path=a_sampler).result(), 404)
    assert post(hf_server, "get_info", {"model_id": a_training.model_id}, bob) == 404
    assert post(hf_server, "optim_step", {"model_id": a_training.model_id, "seq_id": 5, "adam_params": {}},
                bob) == 404
    with pytest.raises(Exception):
        b_service.create_training_client_from_state(a_state).result()
    assert a_state in {c.tinker_path for c in rest["alice"].list_user_checkpoints().result().checkpoints}

    # once alice publishes it, bob may load it (as on Tinker), but still not list or delete it
    rest["alice"].publish_checkpoint_from_tinker_path(a_state).result()
    loaded = b_service.create_training_client_from_state(a_state).result()
    assert loaded.forward([sft_datum()], "cross_entropy").result().metrics["loss:sum"] > 0
    refused(lambda: rest["bob"].delete_checkpoint_from_tinker_path(a_state).result(), 404)

    b_service.close("success")  # before its key is revoked: its session heartbeats would fail until exit

    # revocation applies to the very next request, from another process
    assert f"revoked {bob_id}" in keys_cli(db_path, "revoke", bob_id)
    assert f"{bob_id}\tbob" in keys_cli(db_path, "list") and "revoked" in keys_cli(db_path, "list")
    refused(lambda: rest["bob"].list_training_runs().result(), 401)
    assert post(hf_server, "create_session", {}, bob) == 401
    assert rest["alice"].list_training_runs().result().training_runs  # alice is unaffected
    a_service.close("success")
