"""Latency properties of `ttt serve` that the bench (bench/bench_shim.py) depends on, checked without a model:
replies leave in one segment with TCP_NODELAY (no ~40 ms Nagle / delayed-ACK stall per request on a keep-alive
connection), a long poll wakes as soon as its operation finishes, and finished request ids expire cheaply."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import statistics
import threading
import time

import pytest

from shim.checkpoint_paths import CheckpointStore
from shim.server.endpoints import TinkerApi
from shim.server.main import build_parser, start_server
from shim.server.request_futures import RequestFutures

KEY = "tml-perf-test"


class NoEngine:
    """Just a checkpoint store: enough for client/config, healthz and retrieve_future."""

    def __init__(self, root):
        self.store = CheckpointStore(root)


@pytest.fixture()
def bare_server(tmp_path):
    """The HTTP front end over no engine."""
    server, _ = start_server(NoEngine(tmp_path / "ckpt"), KEY, long_poll_s=5.0)
    yield server
    server.shutdown()
    server.server_close()
    server.api.executor.shutdown(wait=False)


def _request(sock: socket.socket, reader, endpoint: str, body: dict) -> tuple[int, bytes]:
    data = json.dumps(body).encode()
    sock.sendall(f"POST /api/v1/{endpoint} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    status = int(reader.readline().split()[1])
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return status, reader.read(length)


def test_keep_alive_requests_do_not_stall_on_delayed_acks(bare_server):
    """With Nagle on and headers and body sent as two writes, every reply after the first few on a connection
    waited for the client's delayed ACK (~40 ms on Linux): that was most of the served/in-process gap."""
    host, port = bare_server.server_address[:2]
    with socket.create_connection((host, port)) as sock, sock.makefile("rb") as reader:
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            status, body = _request(sock, reader, "client/config", {"sdk_version": "0.38.0"})
            times.append(time.perf_counter() - t0)
            assert status == 200 and json.loads(body)["parallel_fwdbwd_chunks"] is True
    assert statistics.median(times) < 0.02, [round(t * 1000, 1) for t in times]


def test_retrieve_future_wakes_when_the_operation_finishes(bare_server):
    api: TinkerApi = bare_server.api
    inner: concurrent.futures.Future = concurrent.futures.Future()
    owner = bare_server.registry.db.keys()[0]["key_id"]
    request_id, _ = api.futures.add(None, lambda: inner, lambda result, _: ("application/json",
                                                                           json.dumps(result).encode()),
                                    owner=owner)
    host, port = bare_server.server_address[:2]
    threading.Timer(0.3, inner.set_result, args=({"done": 1},)).start()
    with socket.create_connection((host, port)) as sock, sock.makefile("rb") as reader:
        t0 = time.perf_counter()
        status, body = _request(sock, reader, "retrieve_future", {"request_id": request_id})
        waited = time.perf_counter() - t0
    assert status == 200 and json.loads(body) == {"done": 1}
    assert 0.25 < waited < 0.3 + 0.25, waited  # no poll interval between completion and the reply


def test_retrieve_future_times_out_to_try_again_and_keeps_the_operation(tmp_path):
    """A long poll whose operation is still running answers try_again (the SDK polls again at once) after
    long_poll_s, without cancelling the operation; the next poll gets the result as soon as it is ready."""
    server, _ = start_server(NoEngine(tmp_path / "ckpt"), KEY, long_poll_s=0.2)
    try:
        api: TinkerApi = server.api
        inner: concurrent.futures.Future = concurrent.futures.Future()
        owner = server.registry.db.keys()[0]["key_id"]
        request_id, _ = api.futures.add(None, lambda: inner, lambda result, _: ("application/json",
                                                                               json.dumps(result).encode()),
                                        owner=owner)
        host, port = server.server_address[:2]
        with socket.create_connection((host, port)) as sock, sock.makefile("rb") as reader:
            t0 = time.perf_counter()
            status, body = _request(sock, reader, "retrieve_future", {"request_id": request_id})
            waited = time.perf_counter() - t0
            assert status == 200 and json.loads(body) == {"type": "try_again", "request_id": request_id,
                                                          "queue_state": "active"}
            assert 0.19 < waited < 0.2 + 0.25, waited
            assert not inner.cancelled() and inner.set_running_or_notify_cancel()
            threading.Timer(0.1, inner.set_result, args=({"done": 2},)).start()
            t0 = time.perf_counter()
            status, body = _request(sock, reader, "retrieve_future", {"request_id": request_id})
            waited = time.perf_counter() - t0
        assert status == 200 and json.loads(body) == {"done": 2}
        assert waited < 0.1 + 0.15, waited
    finally:
        server.shutdown()
        server.server_close()
        server.api.executor.shutdown(wait=False)


def test_switch_interval_option():
    assert build_parser().parse_args([]).switch_interval_ms == 1.0
    assert build_parser().parse_args(["--switch-interval-ms", "0.5"]).switch_interval_ms == 0.5


def test_finished_request_ids_expire_and_free_their_keys():
    futures = RequestFutures(keep_s=0.05)
    done: concurrent.futures.Future = concurrent.futures.Future()
    done.set_result(1)
    first, _ = futures.add(("model", 1), lambda: done, lambda r, _: ("", b""))
    assert futures.add(("model", 1), lambda: pytest.fail("a retry must not start the op again"),
                       lambda r, _: ("", b""))[0] == first
    running: concurrent.futures.Future = concurrent.futures.Future()
    kept, _ = futures.add(("model", 2), lambda: running, lambda r, _: ("", b""))
    time.sleep(0.1)
    again, _ = futures.add(("model", 1), lambda: done, lambda r, _: ("", b""))  # sweeps the expired one
    assert again != first and futures.get(first) is None
    assert futures.get(kept) is not None, "an unfinished operation is never forgotten"
    assert len(futures) == 2


def test_torch_threads_option():
    assert build_parser().parse_args(["--torch-threads", "2"]).torch_threads == 2
    assert build_parser().parse_args([]).torch_threads is None
