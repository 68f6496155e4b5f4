"""Hostile programs are contained and never rewarded.

Each program is a circle-packing answer (`run_packing`) that attacks the host, then claims a perfect score.
Every test checks both: the attack had no effect outside the sandbox, and the reward is 0. Tests that rely
on a particular protection skip, with the reason, on hosts where it is off.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest

from sandbox_helpers import processes_with, require, require_any
from envs.base import State
from envs.circle_packing import CirclePackingEnv

# The program shares a process with the runner, so it can write the runner's channel fds (named in
# call.json, in its cwd) itself; the parent must treat those bytes as hostile.
CHANNEL = ('import json\nSPEC = json.load(open("call.json"))\n'
           'def channel(key):\n    return os.fdopen(os.dup(SPEC[key]), "wb")\n')
FAKE_STATUS = 'channel("status_fd").write(b\'{"phase": "done", "ok": true}\')\n'
CLAIM = "    return np.full((26, 2), 0.5), np.full(26, 0.5), 1e9\n"  # all circles on top of each other


def env(timeout_s=20.0, memory_mb=512) -> CirclePackingEnv:  # generous: CI machines can be busy
    return CirclePackingEnv(n=26, timeout_s=timeout_s, memory_mb=memory_mb)


def program(body: str, header: str = "") -> str:
    return ("import os, sys, time\nimport numpy as np\n" + header + "\ndef run_packing():\n"
            + textwrap.indent(textwrap.dedent(body), "    ") + CLAIM)


def verify(source: str, **kw):
    return env(**kw).verify(source, State())


def test_infinite_loop_times_out():
    t0 = time.monotonic()
    r = verify(program("while True:\n    pass\n"), timeout_s=2.0)
    assert r.status == "timeout" and r.reward == 0.0
    assert time.monotonic() - t0 < 8


def test_blocked_in_c_code_times_out():
    r = verify(program("time.sleep(1000)\n"), timeout_s=1.5)
    assert r.status == "timeout" and r.reward == 0.0


def test_bounded_fork_bomb_is_capped_and_reaped(layers):
    require_any(layers, "cgroup_pids", "uid_drop")
    marker = f"{np.random.randint(10**6)}.{np.random.randint(10**6)}"
    body = f"""
    n = 0
    for _ in range(500):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            os.execv("/bin/sleep", ["sleep", "{marker}"])
        n += 1
    print("forked", n)
    """
    r = verify(program(body), timeout_s=10.0)
    assert r.reward == 0.0 and r.status == "invalid"
    forked = int(r.stdout_tail.split("forked")[1].split()[0])
    from envs.sandbox import Limits, nproc_limit

    cap = Limits().max_pids if layers["cgroup_pids"] else nproc_limit(Limits())
    assert 0 < forked < cap  # the pids cgroup or RLIMIT_NPROC stopped it
    time.sleep(0.2)
    assert processes_with(marker) == []


def test_20_gb_allocation_is_refused():
    r = verify(program("x = bytearray(20 * 1024 ** 3)\n"))
    assert r.status == "oom" and r.reward == 0.0


def test_touching_more_than_the_memory_cgroup_is_oom_killed(layers):
    require(layers, "cgroup_memory")
    from envs.sandbox import Limits, SandboxJob, run_sandboxed

    src = "import numpy as np\ndef main():\n    x = np.ones(96 * 1024 ** 2)\n    return float(x.sum())\n"  # 768 MB
    out = run_sandboxed(SandboxJob(src, "main", result="json"),
                        Limits(timeout_s=20, memory_mb=256, address_space_mb=4096))
    assert out.status == "oom", out.message


def test_no_connection_to_a_loopback_listener(layers):
    require_any(layers, "bwrap", "seccomp")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        body = f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"leak")
            print("CONNECTED")
        except OSError as e:
            print("blocked", e)
        """
        r = verify(program(body))
        assert "CONNECTED" not in r.stdout_tail and "blocked" in r.stdout_tail
        with pytest.raises(BlockingIOError):
            listener.accept()
        assert r.reward == 0.0
    finally:
        listener.close()


def test_environment_and_parent_proc_are_not_readable(monkeypatch, layers):
    require_any(layers, "bwrap", "uid_drop")
    secret = "s3cr3t-" + uuid.uuid4().hex
    monkeypatch.setenv("TTT_TEST_SECRET", secret)
    body = f"""
    print("env:", os.environ.get("TTT_TEST_SECRET"), len(os.environ))
    for pid in ({os.getpid()}, os.getppid(), 1):
        try:
            data = open(f"/proc/{{pid}}/environ", "rb").read()
            print(pid, "read", b"TTT_TEST_SECRET" in data, data[:200])
        except OSError as e:
            print(pid, "denied", type(e).__name__)
    """
    r = verify(program(body))
    assert "env: None" in r.stdout_tail
    assert secret not in r.stdout_tail and "True" not in r.stdout_tail
    assert r.reward == 0.0


def test_writes_outside_the_sandbox_do_not_land(tmp_path, layers):
    require_any(layers, "bwrap", "uid_drop")
    targets = [str(tmp_path / "escape.txt"), os.path.join(os.path.dirname(__file__), "pwned.txt")]
    if layers["bwrap"]:  # world-writable host dirs are out of reach only with a private mount namespace
        targets += [f"/tmp/ttt-pwned-{uuid.uuid4().hex}", f"/dev/shm/ttt-pwned-{uuid.uuid4().hex}"]
    body = f"""
    for path in {targets!r}:
        try:
            open(path, "w").write("pwned")
            print("wrote", path)
        except OSError as e:
            print("refused", type(e).__name__)
    """
    r = verify(program(body))
    assert not any(os.path.exists(p) for p in targets)
    assert r.reward == 0.0


def test_setsid_grandchild_does_not_outlive_the_kill(layers):
    require_any(layers, "cgroup_kill", "bwrap")  # killpg alone misses setsid escapees (SANDBOX.md G3)
    marker = f"{np.random.randint(10**6)}.{np.random.randint(10**6)}"
    body = f"""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv("/bin/sleep", ["sleep", "{marker}"])
        os._exit(0)
    time.sleep(0.3)
    while True:
        pass
    """
    r = verify(program(body), timeout_s=2.0)
    assert r.status == "timeout" and r.reward == 0.0
    time.sleep(0.2)
    assert processes_with(marker) == []


def test_sandbox_dies_with_its_parent_process(layers):
    require_any(layers, "pdeathsig", "bwrap")
    marker = f"{np.random.randint(10**6)}.{np.random.randint(10**6)}"
    driver = textwrap.dedent(f"""
        from envs.sandbox import run_sandboxed, SandboxJob, Limits
        src = "import os\\ndef main():\\n    os.execv('/bin/sleep', ['sleep', '{marker}'])\\n"
        run_sandboxed(SandboxJob(src, "main", result="json"), Limits(timeout_s=60))
    """)
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    try:
        deadline = time.monotonic() + 30
        while not processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_with(marker), "the sandboxed program never started"
        os.kill(proc.pid, signal.SIGKILL)  # what the OOM killer does to a Ray worker
        proc.wait()
        deadline = time.monotonic() + 5
        while processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_with(marker) == []
    finally:
        proc.kill()


def test_printed_fake_score_is_ignored():
    r = verify(program('print("FINAL SCORE: 999\\nscore = 1e9\\nsum_radii: 13.0")\n'))
    assert r.status == "invalid" and r.reward == 0.0 and r.score is None
    assert "FINAL SCORE" in r.stdout_tail and "overlap" in r.message


def test_patching_the_scorer_only_changes_the_program_itself():
    body = """
    import gc
    np.all = lambda *a, **k: True
    np.any = lambda *a, **k: False
    np.isfinite = lambda x: np.ones(np.shape(x), dtype=bool)
    try:
        import envs.circle_packing as cp
        cp.check_packing = lambda *a, **k: ("", 0.0)
        print("patched the verifier module")
    except ImportError as e:
        print("no verifier here:", e)
    hits = [f for f in gc.get_objects() if getattr(f, "__name__", "") == "check_packing"]
    print("verifier functions found:", len(hits))
    """
    r = verify(program(body))
    assert r.status == "invalid" and r.reward == 0.0
    assert "no verifier here" in r.stdout_tail and "found: 0" in r.stdout_tail
    assert np.all(np.array([False])) == np.False_  # our numpy is untouched


def test_nan_and_inf_outputs_are_invalid():
    for bad in ("np.full((26, 2), np.nan), np.full(26, 0.01), 1.0", "np.full((26, 2), 0.5), np.full(26, -np.inf), np.nan"):
        src = f"import numpy as np\ndef run_packing():\n    return {bad}\n"
        r = verify(src)
        assert r.status == "invalid" and r.reward == 0.0 and "finite" in r.message, r.message


def test_objects_with_malicious_methods_are_not_data():
    header = textwrap.dedent("""
        class Evil(float):
            def __eq__(self, other): return True
            def __ge__(self, other): return True
            def __le__(self, other): return True
            def __float__(self): return 1e9
        class Liar:
            def __eq__(self, other): return True
            def __float__(self): return 1e9
            def __array__(self, dtype=None, copy=None): raise RuntimeError("no")
    """)
    src = "import numpy as np\n" + header + "def run_packing():\n    return [[Liar()] * 2] * 26, [Liar()] * 26, Liar()\n"
    r = verify(src)
    assert r.status in ("invalid", "runtime_error") and r.reward == 0.0
    from envs.code_env import CodeEnv
    code = CodeEnv(families=["lis"], problems_per_family=1, timeout_s=5)
    for answer in ("Liar()", "Evil(len(nums))"):  # not data; a float that claims to equal every int
        r = code.verify(header + f"def longest_increasing(nums):\n    return {answer}\n", State(task_id="lis/0"))
        assert r.reward == 0.0 and r.extra["passed"] == 0, r.message


def test_pickle_payload_in_the_result_is_never_loaded(tmp_path):
    marker = tmp_path / "payload-ran"
    header = textwrap.dedent(f"""
        class Payload:
            def __reduce__(self):
                return (os.system, ("touch {marker}",))
    """)
    body = CHANNEL + textwrap.dedent("""
    with channel("result_fd") as f:
        np.savez(f, r0=np.array([Payload()], dtype=object), r1=np.array([Payload()], dtype=object))
    """) + FAKE_STATUS + "os._exit(0)\n"
    r = verify(program(body, header))
    assert r.status == "invalid" and r.reward == 0.0 and "not a plain numeric array" in r.message
    assert not marker.exists()


LYING_NPZ = textwrap.dedent("""
    import zipfile
    header = "{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".ljust(117) + "\\n"
    npy = b"\\x93NUMPY\\x01\\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(64)
    with zipfile.ZipFile(channel("result_fd"), "w") as zf:
        zf.writestr("r0.npy", npy)
        zf.writestr("r1.npy", npy)
""")
PLANT_EVERYWHERE = ('for d in (".", "/tmp", "/out", os.path.dirname(os.getcwd())):\n'
                    '    try:\n        {}\n    except OSError:\n        pass\n')


@pytest.mark.parametrize("kind,reason", [
    ("symlink", "left no result"), ("fifo", "left no result"), ("file", "left no result"),
    ("huge", "over the"), ("compressed", "compressed"), ("closed", "without reporting"),
    ("lying_header", "claims 70368744177664 bytes"), ("object_header", "not numeric")])
def test_planted_result_files_are_rejected(kind, reason):
    plant = {  # files planted where the result once lived are never read; the channel's bytes are checked
        "symlink": PLANT_EVERYWHERE.format('os.symlink("/etc/passwd", os.path.join(d, "result.npz"))'),
        "fifo": PLANT_EVERYWHERE.format('os.mkfifo(os.path.join(d, "result.npz"))'),
        "file": PLANT_EVERYWHERE.format('np.savez(os.path.join(d, "result.npz"), r0=np.zeros((26, 2)))'),
        # the parent stops reading at the cap and closes its end: the rest of the write fails (EPIPE)
        "huge": 'try:\n    channel("result_fd").write(bytes(40 * 1024 ** 2))\nexcept OSError:\n    pass\n',
        "compressed": 'np.savez_compressed(channel("result_fd"), r0=np.zeros((26, 2)), r1=np.full(26, 0.5))\n',
        "closed": 'os.close(SPEC["status_fd"]); os.close(SPEC["result_fd"])\nos._exit(0)\n',
        # np.load allocated what the header claimed: 64 TiB -> MemoryError in the parent
        "lying_header": LYING_NPZ.format(descr="<f8", shape=(8 << 40,)),
        "object_header": LYING_NPZ.format(descr="|O", shape=(1,)),
    }[kind]
    t0 = time.monotonic()
    r = verify(program(CHANNEL + plant + FAKE_STATUS + "os._exit(0)\n"))
    expected = "runtime_error" if kind == "closed" else "invalid"  # no status at all: the run crashed
    assert r.status == expected and r.reward == 0.0 and reason in r.message, r.message
    assert time.monotonic() - t0 < 19  # a FIFO must not hang the reader (the program itself exits at once)


def test_no_stale_result_is_reused():
    valid = CirclePackingEnv(n=26).baseline_program()
    assert verify(valid).ok
    r = verify(program(CHANNEL + FAKE_STATUS + "os._exit(0)\n"))
    assert r.status == "invalid" and "left no result" in r.message
