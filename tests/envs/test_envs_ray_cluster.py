"""A Ray cluster of two nodes on loopback (a head and a worker node, each started with `ray start` as on
a real cluster): the verifier pool joins it by address and verifications run on both nodes."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).with_name("ray"))
SCRIPT = """
import sys, time
import ray
from envs.base import State
from envs.pool import VerifierPool, init_ray
from envs.toy_digits import ToyDigitsEnv
class SlowToy(ToyDigitsEnv):
    # long enough that evaluations overlap: each node has one CPU, so the second node must take some
    def verify(self, answer, state):
        time.sleep(0.3)
        return super().verify(answer, state)
init_ray(sys.argv[1])
deadline = time.monotonic() + 90
while sum(n["Alive"] for n in ray.nodes()) < 2 and time.monotonic() < deadline:
    time.sleep(0.5)  # the worker node registers asynchronously
pool = VerifierPool(SlowToy(length=4), backend="ray", address=sys.argv[1], cpus_per_eval=1.0)
results = pool.evaluate(["1234 5678"] * 24, [State()] * 24)
assert all(r.status == "ok" for r in results), [r.status for r in results]
print("NODES", len({r.extra["ray_node"] for r in results}), "SLOTS", pool.slots)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args, env):
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_verifications_run_on_both_nodes_of_a_loopback_cluster():
    port = _free_port()
    ray_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # AF_UNIX socket paths must stay under 108 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": ray_dir}
    common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--include-dashboard=false"]
    head = _ray("start", "--head", f"--port={port}", "--num-cpus=1", f"--temp-dir={ray_dir}",
                *common[:3], env=env)
    assert head.returncode == 0, head.stderr[-2000:]
    try:
        worker = _ray("start", f"--address=127.0.0.1:{port}", "--num-cpus=1", *common[:3], env=env)
        assert worker.returncode == 0, worker.stderr[-2000:]
        run = subprocess.run([sys.executable, "-c", SCRIPT, f"127.0.0.1:{port}"], env=env, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "NODES 2 SLOTS 2" in run.stdout, run.stdout
    finally:
        _ray("stop", "--force", env=env)
        shutil.rmtree(ray_dir, ignore_errors=True)
