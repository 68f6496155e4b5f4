"""Protection detection (logged once), the fallback stack, and what a well-behaved program can rely on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from envs.sandbox import Limits, SandboxJob, run_sandboxed
from envs.sandbox import spawner as sandbox_spawner
from envs.sandbox.detect import detect_profile
from envs.sandbox.identity import UID_BASE, UID_COUNT
from envs.sandbox.profile import LAYERS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_layer_is_either_on_or_explained(profile, layers):
    assert set(layers) == set(LAYERS)
    for name, on in layers.items():
        assert on or name in profile.off, name
    if os.geteuid() == 0 and shutil.which("bwrap") and shutil.which("setpriv") and not os.environ.get("TTT_SANDBOX_DISABLE"):
        assert layers["bwrap"] and layers["uid_drop"] and layers["pdeathsig"]


def test_missing_protections_are_logged_once():
    """Where a level is kept without some layers (here: minimal, named), what is off is one warning per process;
    where it is refused, the refusal is the only line (no warning before it)."""
    code = textwrap.dedent("""
        import logging, sys
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        from envs.sandbox import IsolationError, isolation, run_sandboxed, SandboxJob
        from envs.sandbox.detect import current_profile
        current_profile(); current_profile()
        try:
            run_sandboxed(SandboxJob("def main():\\n    return 1\\n", "main", result="json"))
        except IsolationError as e:
            print("REFUSED", e, file=sys.stderr)
        with isolation.level(sys.argv[1]):
            for _ in range(2):
                assert run_sandboxed(SandboxJob("def main():\\n    return 1\\n", "main", result="json")).value == 1
    """)
    env = {**os.environ, "TTT_SANDBOX_DISABLE": "seccomp"}
    out = subprocess.run([sys.executable, "-c", code, "minimal"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if "protections OFF" in line]
    assert len(lines) == 1 and lines[0].startswith("WARNING sandbox_isolation=minimal; protections OFF: ")
    assert "seccomp (disabled by TTT_SANDBOX_DISABLE)" in lines[0]
    refused = [line for line in out.stderr.splitlines() if line.startswith("REFUSED")]
    assert len(refused) == 1 and out.stderr.index("REFUSED") < out.stderr.index("protections OFF")
    bad = subprocess.run([sys.executable, "-c", "from envs.sandbox.detect import current_profile; current_profile()"],
                         cwd=REPO, env={**os.environ, "TTT_SANDBOX_DISABLE": "firewall"}, capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown layers ['firewall']" in bad.stderr


def test_fallback_without_bwrap_still_isolates_the_user_and_environment(monkeypatch):
    monkeypatch.setenv("TTT_TEST_SECRET", "hidden")
    fallback = detect_profile({"bwrap", "seccomp"})
    assert not fallback.layers()["bwrap"] and "bwrap" in fallback.off
    src = "import os\ndef main():\n    return [os.getuid(), os.environ.get('TTT_TEST_SECRET')]\n"
    out = run_sandboxed(SandboxJob(src, "main", result="json"), Limits(timeout_s=20), profile=fallback)
    assert out.ok and out.value[1] is None
    if fallback.drop_uid:  # an evaluation's own uid, from the reserved range
        assert UID_BASE <= out.value[0] < UID_BASE + UID_COUNT


def test_no_capabilities_even_when_the_uid_drop_is_off(layers):
    if not (os.geteuid() == 0 and layers["bwrap"]):
        pytest.skip("only meaningful for bwrap started by root")
    src = "def main():\n    s = open('/proc/self/status').read()\n    return s.split('CapEff:')[1].split()[0]\n"
    for disabled in (set(), {"uid_drop"}):
        out = run_sandboxed(SandboxJob(src, "main", result="json"), Limits(timeout_s=20), profile=detect_profile(disabled))
        assert out.ok and int(out.value, 16) == 0, (disabled, out.value)


def test_programs_get_thread_caps_multiprocessing_and_per_call_errors():
    src = textwrap.dedent("""
        import os
        from multiprocessing import Pool

        def square(x):
            return x * x

        def main(x):
            if x < 0:
                raise ValueError("negative")
            with Pool(2) as pool:
                squares = pool.map(square, range(x))
            return [os.environ["OMP_NUM_THREADS"], os.environ["OPENBLAS_NUM_THREADS"], squares, __name__]
    """)
    out = run_sandboxed(SandboxJob(src, "main", mode="each", result="json", calls=[[3], [-1]]),
                        Limits(timeout_s=30, cpus=2))
    assert out.ok, out.message + out.stderr_tail
    assert out.value[0] == {"value": ["2", "2", [0, 1, 4], "program"]}
    assert "ValueError: negative" in out.value[1]["error"]
    assert sandbox_spawner._thread is not None and sandbox_spawner._thread.name == "sandbox-spawner"


def test_syntax_errors_and_exceptions_are_classified():
    assert run_sandboxed(SandboxJob("def main(:\n", "main")).status == "format_error"
    crash = run_sandboxed(SandboxJob("def main():\n    return 1 / 0\n", "main"))
    assert crash.status == "runtime_error" and "ZeroDivisionError" in crash.message and "line 2" in crash.message
    exits = run_sandboxed(SandboxJob("import os\ndef main():\n    os._exit(3)\n", "main"))
    assert exits.status == "runtime_error" and "without reporting" in exits.message
    assert run_sandboxed(SandboxJob("def main():\n    return {1, 2}\n", "main", result="json")).status == "invalid"


def test_leftover_threads_and_atexit_hooks_do_not_delay_the_result():
    src = ("import atexit, threading, time\ndef main():\n    threading.Thread(target=time.sleep, args=(60,)).start()\n"
           "    atexit.register(time.sleep, 60)\n    return 5\n")
    out = run_sandboxed(SandboxJob(src, "main", result="json"), Limits(timeout_s=10))
    assert out.ok and out.value == 5 and out.wall_s < 8
