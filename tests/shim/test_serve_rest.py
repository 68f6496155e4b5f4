"""The official SDK's RestClient calls against a real `ttt serve` process, then the same calls after the server
was stopped and started again on the same directory: runs, sessions and checkpoints (owner, TTL, published
flag) come back from SQLite, and the checkpoints still load, publish and delete."""

from __future__ import annotations

import io
import json
import tarfile
import time
import urllib.request

import pytest
import tinker
from tinker import types

from tests.shim.helpers import sft_datum
from tests.shim.serve_process import ServeProcess

KEY = "tml-rest-test-key"


def _get(url: str, key: str | None = KEY) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"X-API-Key": key} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _ids(listing) -> set[str]:
    return {c.checkpoint_id for c in listing.checkpoints}


def _quick(fn, limit_s: float = 5.0):
    """fn() must fail at once (a 4xx the SDK does not retry), not after minutes of retries."""
    t0 = time.monotonic()
    with pytest.raises(tinker.APIStatusError) as err:
        fn()
    assert time.monotonic() - t0 < limit_s, "the SDK retried: the status must be a non-retried 4xx"
    return err.value


def test_rest_calls_survive_a_restart(tmp_path, monkeypatch, tiny_model_path):
    ckpt = tmp_path / "ckpt"
    server = ServeProcess(ckpt, "--ttl-sweep", "0.3", api_key=KEY)
    try:
        service = tinker.ServiceClient(base_url=server.url, api_key=KEY)
        rest = tinker.RestClient(base_url=server.url, api_key=KEY)
        training = service.create_lora_training_client(base_model="tiny", rank=8,
                                                       user_metadata={"renderer_name": "role_colon"}).result()
        run_id = training.model_id
        session_id = run_id.split(":train:")[0]
        training.forward_backward([sft_datum()], "cross_entropy")
        training.optim_step(types.AdamParams(learning_rate=1e-2)).result()
        state = training.save_state("s1").result().path
        sampler_path = training.save_weights_for_sampler("w1").result().path
        doomed = training.save_weights_for_sampler("w2").result().path
        short = training.save_state("short", ttl_seconds=1).result().path
        sampler = training.save_weights_and_get_sampling_client().result()

        runs = rest.list_training_runs().result()
        assert run_id in [r.training_run_id for r in runs.training_runs] and runs.cursor.total_count == 1
        run = rest.get_training_run(run_id).result()
        assert (run.base_model, run.lora_rank, run.is_lora) == ("tiny", 8, True)
        assert run.user_metadata == {"renderer_name": "role_colon"}
        assert run.last_checkpoint.tinker_path in (state, short)
        assert run.last_sampler_checkpoint.tinker_path == doomed
        assert rest.get_training_run_by_tinker_path(state).result().training_run_id == run_id
        assert {"weights/s1", "sampler_weights/w1", "sampler_weights/w2"} <= _ids(rest.list_checkpoints(run_id).result())
        mine = rest.list_user_checkpoints().result()
        assert {c.tinker_path for c in mine.checkpoints} >= {state, sampler_path} and mine.cursor.total_count >= 3
        info = rest.get_weights_info_by_tinker_path(state).result()
        assert (info.base_model, info.lora_rank, info.is_lora) == ("tiny", 8, True)

        rest.publish_checkpoint_from_tinker_path(state).result()
        rest.publish_checkpoint_from_tinker_path(state).result()  # idempotent, never a (retried) 409
        listed = {c.tinker_path: c for c in rest.list_checkpoints(run_id).result().checkpoints}
        assert listed[state].public and not listed[sampler_path].public
        rest.unpublish_checkpoint_from_tinker_path(state).result()
        rest.set_checkpoint_ttl_from_tinker_path(sampler_path, 7200).result()
        listed = {c.tinker_path: c for c in rest.list_checkpoints(run_id).result().checkpoints}
        assert not listed[state].public and listed[sampler_path].expires_at is not None
        rest.set_checkpoint_ttl_from_tinker_path(sampler_path, None).result()
        assert _quick(lambda: rest.set_checkpoint_ttl_from_tinker_path(sampler_path, 5).result()).status_code == 400
        rest.delete_checkpoint_from_tinker_path(doomed).result()
        assert "sampler_weights/w2" not in _ids(rest.list_checkpoints(run_id).result())
        assert _quick(lambda: rest.delete_checkpoint_from_tinker_path(doomed).result()).status_code == 404
        assert _quick(lambda: rest.get_training_run("nope:train:0").result()).status_code == 404

        assert session_id in rest.list_sessions().result().sessions
        got = rest.get_session(session_id).result()
        assert run_id in got.training_run_ids and got.sampler_ids

        # TTL: the 1 s checkpoint disappears from lists, and the sweeper deletes its files
        time.sleep(1.5)
        assert "weights/short" not in _ids(rest.list_checkpoints(run_id).result())
        assert not (ckpt / run_id / "weights" / "short").exists()

        # archive download (the older SDKs' get_checkpoint_archive_url contract: {"url", "expires"})
        status, body = _get(f"{server.url}/api/v1/training_runs/{run_id}/checkpoints/weights/s1/archive")
        assert status == 200, body
        url = json.loads(body)["url"]
        status, tar_bytes = _get(url, key=None)  # a signed URL needs no key
        assert status == 200
        names = tarfile.open(fileobj=io.BytesIO(tar_bytes)).getnames()
        assert any(n.endswith("adapter_model.safetensors") for n in names), names
        assert _get(url.replace("signature=", "signature=0"), key=None)[0] == 404

        # SamplingClient.get_tokenizer() offline: the server names the local model dir, not the alias 'tiny'
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert sampler.get_base_model() == tiny_model_path
        assert sampler.get_tokenizer().encode("hello")
        named = service.create_sampling_client(model_path=sampler_path).result()
        assert named.get_tokenizer().encode("hello")
        service.close("success")
    finally:
        assert server.stop() in (0, -15), "".join(server.lines)[-3000:]

    server = ServeProcess(ckpt, api_key=KEY)
    try:
        rest = tinker.RestClient(base_url=server.url, api_key=KEY)
        assert [r.training_run_id for r in rest.list_training_runs().result().training_runs] == [run_id]
        assert _ids(rest.list_checkpoints(run_id).result()) == {"weights/s1", "sampler_weights/w1"}
        assert session_id in rest.list_sessions().result().sessions
        assert rest.get_training_run(run_id).result().user_metadata == {"renderer_name": "role_colon"}
        service = tinker.ServiceClient(base_url=server.url, api_key=KEY)
        resumed = service.create_training_client_from_state(state).result()
        assert resumed.forward([sft_datum()], "cross_entropy").result().metrics["loss:sum"] > 0
        assert rest.get_sampler(sampler.sampler_id if hasattr(sampler, "sampler_id") else
                                sampler._sampling_session_id).result().base_model == tiny_model_path
        rest.publish_checkpoint_from_tinker_path(state).result()
        assert [c.public for c in rest.list_checkpoints(run_id).result().checkpoints
                if c.tinker_path == state] == [True]
        rest.delete_checkpoint_from_tinker_path(sampler_path).result()
        assert _ids(rest.list_checkpoints(run_id).result()) == {"weights/s1"}
        assert resumed.model_id in [r.training_run_id for r in rest.list_training_runs().result().training_runs]
        service.close("success")
    finally:
        server.stop()
