"""Load test of `ttt serve`'s HTTP stack: N concurrent keep-alive clients on 127.0.0.1 for T seconds, each
looping over cheap authenticated requests (client/config, GET training_runs from SQLite, healthz) and
reconnecting every 50 requests (so accept and the listen backlog are exercised too). Reports requests/s,
p50/p99/max latency, and failed connections / non-2xx replies (goal: 0).

Bounded on purpose: at most 1000 clients and 120 s, loopback only.

    .venv/bin/python bench/bench_serve_load.py [--clients 200] [--seconds 30] [--out F]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
API_KEY = "tml-bench-load"
HOST = "127.0.0.1"
MAX_CLIENTS, MAX_SECONDS = 1000, 120
REQUESTS = [("POST", "/api/v1/client/config", b'{"sdk_version": "0.38.0"}'),
            ("GET", "/api/v1/training_runs?limit=5", b""), ("GET", "/api/v1/healthz", b"")]


def start_server(tmp: str) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-c", "import sys; from shim.server import serve_main; sys.exit(serve_main(sys.argv[1:]))",
           "--model", "tiny", "--sampler", "hf", "--host", HOST, "--port", "0", "--api-key", API_KEY,
           "--checkpoint-dir", f"{tmp}/ckpt", "--access-log", f"{tmp}/access.jsonl", "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    for line in proc.stdout:
        if "listening on " in line:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, int(line.rsplit(":", 1)[1])
    raise RuntimeError("ttt serve exited before listening")


async def client(port: int, deadline: float, latencies: list, errors: dict, i: int) -> None:
    n = 0
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError as exc:
            errors[f"connect: {type(exc).__name__}"] = errors.get(f"connect: {type(exc).__name__}", 0) + 1
            await asyncio.sleep(0.05)
            continue
        try:
            for _ in range(50):
                if time.monotonic() >= deadline:
                    break
                method, path, body = REQUESTS[(i + n) % len(REQUESTS)]
                n += 1
                t0 = time.perf_counter()
                writer.write(f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {API_KEY}\r\n"
                             f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                status = int(head.split(b" ", 2)[1])
                if not 200 <= status < 300:
                    errors[f"status {status}"] = errors.get(f"status {status}", 0) + 1
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors[f"connection: {type(exc).__name__}"] = errors.get(f"connection: {type(exc).__name__}", 0) + 1
        finally:
            writer.close()


async def run_load(port: int, clients: int, seconds: float) -> tuple[list, dict, float]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    t0 = time.monotonic()
    await asyncio.gather(*(client(port, t0 + seconds, latencies, errors, i) for i in range(clients)))
    return latencies, errors, time.monotonic() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.seconds <= MAX_SECONDS:
        raise SystemExit(f"bench_serve_load: 1..{MAX_CLIENTS} clients and at most {MAX_SECONDS} s")
    with tempfile.TemporaryDirectory(prefix="bench-serve-load-") as tmp:
        proc, port = start_server(tmp)
        try:
            load = os.getloadavg()[0]
            latencies, errors, wall = asyncio.run(run_load(port, args.clients, args.seconds))
        finally:
            proc.terminate()
            proc.wait(60)
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    report = (f"{args.clients} concurrent keep-alive clients x {args.seconds:g} s on {HOST} ({os.cpu_count()} CPUs, "
              f"load average {load:.2f} before; clients and server on the same machine): {len(latencies)} requests, "
              f"{len(latencies) / wall:.0f} req/s; latency p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, "
              f"max {latencies[-1] * 1000:.1f} ms; failed connections / non-2xx: "
              f"{sum(errors.values())} {errors or ''}".rstrip())
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
