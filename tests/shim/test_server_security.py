"""Keys, malformed and out-of-order requests: each gets a 4xx with a message, the server keeps serving, and one
client's failure leaves another's model alone."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
import tinker
from tinker import types

from tests.shim.conftest import API_KEY, sdk_client
from tests.shim.helpers import sft_datum


def call(server, endpoint, body: bytes | dict | None = None, key=API_KEY, method="POST", headers=None):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(f"{server.url}/api/v1/{endpoint}", data=data if method == "POST" else None,
                                 method=method, headers={"X-API-Key": key, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def healthy(server) -> bool:
    return call(server, "healthz", method="GET") == (200, b'{"status": "ok"}')


def test_wrong_or_missing_key_gets_401(hf_server):
    assert call(hf_server, "create_session", {}, key="tml-wrong")[0] == 401
    assert call(hf_server, "create_session", {}, key="")[0] == 401
    assert call(hf_server, "get_server_capabilities", method="GET", key="tml-wrong")[0] == 401
    with pytest.raises(tinker.AuthenticationError):
        tinker.ServiceClient(base_url=hf_server.url, api_key="tml-not-the-key").create_lora_training_client(
            base_model="tiny", rank=8).result()
    assert call(hf_server, "create_session", {})[0] == 200 and healthy(hf_server)


@pytest.mark.parametrize("endpoint,body,headers", [
    ("create_session", b"\xff\x00not json", {}),
    ("create_model", b"[1, 2]", {}),
    ("create_model", {"session_id": 5}, {}),
    ("forward_backward", b"\x0a\xff\xff\xff\xff garbage", {"Content-Type": "application/x-protobuf"}),
    ("forward_backward", {"model_id": "x", "seq_id": 1, "forward_backward_input": {"data": "no"}}, {}),
    ("optim_step", {"model_id": "x", "seq_id": 1, "adam_params": {"learning_rate": "fast"}}, {}),
    ("asample", {"sampling_session_id": "s", "prompt": {"chunks": [{"tokens": ["a"]}]}}, {}),
    ("retrieve_future", {"request_id": 7}, {}),
])
def test_garbage_bodies_get_400_and_the_server_keeps_serving(hf_server, endpoint, body, headers):
    status, reply = call(hf_server, endpoint, body, headers=headers)
    assert status == 400, reply
    assert json.loads(reply)["error"]
    assert healthy(hf_server)


def test_unknown_ids_endpoints_and_oversized_bodies(hf_server):
    assert call(hf_server, "get_info", {"model_id": "nope:train:0"})[0] == 404
    assert call(hf_server, "retrieve_future", {"request_id": "nope"})[0] == 404
    assert call(hf_server, "no_such_endpoint", {})[0] == 404
    # a huge Content-Length is refused from the headers alone, before any of the body is read
    host, port = hf_server.server_address[:2]
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(f"POST /api/v1/create_session HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
                     f"Content-Length: {hf_server.max_body + 1}\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")
    assert healthy(hf_server)


def test_out_of_order_and_replayed_seq_ids(hf_server):
    client = sdk_client(hf_server)
    training = client.create_lora_training_client(base_model="tiny", rank=8).result()
    training.optim_step(types.AdamParams()).result()  # seq_id 1 has run
    step = {"model_id": training.model_id, "seq_id": 1, "adam_params": {"learning_rate": 1e-3}}
    first = json.loads(call(hf_server, "optim_step", step)[1])["request_id"]  # a retry: same future
    assert first and call(hf_server, "retrieve_future", {"request_id": first})[0] == 200
    status, reply = call(hf_server, "optim_step", {**step, "seq_id": 0})  # a seq_id that can never run
    assert status == 400 and b"already ran" in reply
    assert call(hf_server, "optim_step", {**step, "seq_id": 10**9})[0] == 400
    client.close("success")


def test_one_clients_failure_leaves_other_models_alone(hf_server):
    client = sdk_client(hf_server)
    broken = client.create_lora_training_client(base_model="tiny", rank=8).result()
    healthy_model = client.create_lora_training_client(base_model="tiny", rank=8).result()
    with pytest.raises(tinker.RequestFailedError, match="vocab|token"):
        bad = types.Datum(model_input=types.ModelInput.from_ints([1, 2]),
                          loss_fn_inputs={"target_tokens": [10**8, 3], "weights": [1.0, 1.0]})
        broken.forward_backward([bad], "cross_entropy").result()
    with pytest.raises(tinker.RequestFailedError, match="stable_reinforce"):
        broken.forward_backward([sft_datum()], "stable_reinforce").result()
    out = broken.forward_backward([sft_datum()], "cross_entropy").result()  # the failing client itself recovers
    assert out.metrics["loss:sum"] > 0
    assert healthy_model.forward_backward([sft_datum()], "cross_entropy").result().metrics["loss:sum"] > 0
    with pytest.raises(tinker.BadRequestError):
        client.create_lora_training_client(base_model="other/model", rank=8).result()
    client.close("success")
