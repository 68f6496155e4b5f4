"""Hostile requests over a real socket: each gets a bounded JSON 4xx quickly (never a 500, never a hang), the
connection is closed where its unread bytes could be mistaken for a next request, and the server keeps serving.
Also: /metrics in Prometheus text format and the JSON-lines access log."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.shim.test_server_perf import NoEngine

KEY = "tml-hostile-test"
MAX_BODY = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from shim.server.main import start_server

    root = tmp_path_factory.mktemp("hostile")
    server, _ = start_server(NoEngine(root / "ckpt"), KEY, max_body=MAX_BODY, long_poll_s=1.0, header_timeout_s=1.0,
                             body_timeout_s=1.0, access_log=str(root / "access.jsonl"))
    server.access_log_path = root / "access.jsonl"
    yield server
    server.shutdown()
    server.server_close()


def exchange(server, data: bytes | list[bytes], pause: float = 0.0, timeout: float = 10.0):
    """Send `data` (a list: one piece at a time, `pause` apart, stopping when the server hangs up) and read the
    reply -> (status, body as JSON, seconds until the reply, whether the server closed the connection)."""
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=timeout) as sock:
        t0 = time.monotonic()
        for piece in data if isinstance(data, list) else [data]:
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(pause)
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = sock.recv(65536)
            assert chunk, f"closed without a reply after {raw!r}"
            raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        elapsed = time.monotonic() - t0
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])}
        length = int(headers[b"content-length"])
        while len(body) < length:
            body += sock.recv(65536)
        sock.settimeout(1.0)  # a kept-alive connection just stays silent
        try:
            closed = sock.recv(1) == b""
        except ConnectionResetError:
            closed = True
        except socket.timeout:
            closed = False
        return int(head.split()[1]), json.loads(body), elapsed, closed


def request(method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Length: {len(body)}\r\n{headers}"
            f"\r\n").encode() + body


def healthy(server) -> bool:
    return exchange(server, request("GET", "/api/v1/healthz"))[:2] == (200, {"status": "ok"})


def test_chunk_size_minus_one_is_a_json_400(server):
    status, body, elapsed, closed = exchange(server, (
        f"POST /api/v1/create_session HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
        "-1\r\n{}\r\n0\r\n\r\n").encode())
    assert status == 400 and "error" in body and elapsed < 2 and closed


def test_oversize_bodies_are_refused_while_read(server):
    status, body, elapsed, closed = exchange(server, (
        f"POST /api/v1/create_session HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
        f"Content-Length: {10 * MAX_BODY}\r\n\r\n").encode())  # refused from the header alone
    assert status == 413 and closed and elapsed < 2
    # chunked, no length announced: refused once more than MAX_BODY bytes arrived, not at the end of the stream
    head = f"POST /api/v1/create_session HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = b"%x\r\n" % 65536 + b"x" * 65536 + b"\r\n"
    status, body, elapsed, closed = exchange(server, [head.encode()] + [piece] * (4 * MAX_BODY // 65536))
    assert status == 413 and "larger than" in body["error"] and closed and elapsed < 5
    assert healthy(server)


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    b"[]", b"1", b'"text"', b"null", b"\xff\xfe", b"{", b'{"session_id": ' + b"9" * 5000 + b"}",
    b'{"user_metadata": NaN}', b'{"user_metadata": Infinity}',
])
def test_malformed_json_of_any_shape_is_a_json_400(server, body):
    status, reply, elapsed, _ = exchange(server, request("POST", "/api/v1/create_session", body,
                                                         "Content-Type: application/json\r\n"))
    assert status == 400 and reply["error"] and elapsed < 5


@pytest.mark.parametrize("adam", [
    b'{"learning_rate": NaN}', b'{"learning_rate": -0.001}', b'{"learning_rate": 1e30}', b'{"learning_rate": 1e999}',
    b'{"beta1": 1.0}', b'{"beta2": 1.5}', b'{"eps": 0}', b'{"weight_decay": -1}', b'{"grad_clip_norm": -1}',
    b'{"learning_rate": true}', b'{"learning_rate": "fast"}', b'{"momentum": 0.9}',
])
def test_optim_step_rejects_bad_adam_params(server, adam):
    body = b'{"model_id": "x:train:0", "seq_id": 1, "adam_params": ' + adam + b"}"
    status, reply, _, _ = exchange(server, request("POST", "/api/v1/optim_step", body))
    assert status == 400 and ("adam_params" in reply["error"] or "NaN" in reply["error"]), reply


@pytest.mark.parametrize("method,path,expected", [
    ("PUT", "/api/v1/no_such_thing", 404), ("DELETE", "/api/v1/no_such_thing", 404), ("PATCH", "/elsewhere", 404),
    ("PUT", "/api/v1/create_session", 405), ("DELETE", "/api/v1/healthz", 405), ("GET", "/api/v1/create_session", 405),
])
def test_unknown_paths_and_methods_are_json_404_405(server, method, path, expected):
    status, reply, _, _ = exchange(server, request(method, path))
    assert status == expected and reply["error"]  # 404 / 405: statuses the SDK does not retry


def test_slowloris_headers_are_cut_off(server):
    pieces = [b"POST /api/v1/create_session HTTP/1.1\r\n"] + [b"X-Slow: %d\r\n" % i for i in range(30)]
    status, reply, elapsed, closed = exchange(server, pieces, pause=0.2)
    assert status == 408 and closed and 0.9 < elapsed < 3, (status, elapsed)
    status, reply, elapsed, closed = exchange(server, [b""], pause=0.0)  # connects, sends nothing
    assert status == 408 and closed and elapsed < 3


def test_a_slow_body_times_out(server):
    head = request("POST", "/api/v1/create_session")[:-2].replace(b"Content-Length: 0", b"Content-Length: 100")
    status, reply, elapsed, closed = exchange(server, [head + b"\r\n", b'{"a'], pause=0.0)
    assert status == 408 and closed and elapsed < 3


def test_huge_headers_get_431(server):
    status, reply, elapsed, closed = exchange(server, request("GET", "/api/v1/healthz", headers=
                                                              "X-Big: " + "a" * 100_000 + "\r\n"))
    assert status == 431 and closed


def test_replies_are_valid_json_and_metrics_and_access_log_are_written(server):
    assert healthy(server)
    status, _, _, _ = exchange(server, request("POST", "/api/v1/client/config", b"{}"))
    assert status == 200
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    text = raw.partition(b"\r\n\r\n")[2].decode()
    assert 'ttt_serve_requests_total{endpoint="client/config",method="POST",status="200"}' in text
    assert 'ttt_serve_requests_total{endpoint="optim_step",method="POST",status="400"}' in text
    assert "ttt_serve_request_seconds_bucket" in text and "ttt_serve_queue_depth" in text
    assert "ttt_serve_tokens_sampled_total" in text and "ttt_serve_tokens_trained_total" in text
    lines = [json.loads(line) for line in server.access_log_path.read_text().splitlines()]
    assert {"ts", "method", "path", "endpoint", "status", "ms", "key"} <= set(lines[-1])
    assert any(line["endpoint"] == "client/config" and line["status"] == 200 for line in lines)
