"""The sandbox fails closed (issue 23 item 3): generated programs run only where the host keeps the isolation
level asked for (strict unless a weaker one is named); elsewhere one line names what is missing, how to fix it
and the weaker level the host does keep, and no program runs. Tasks that run no program are unaffected.
A host without bwrap is simulated with TTT_SANDBOX_DISABLE (a fresh process: the profile is detected once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest

from envs.sandbox import isolation
from envs.sandbox.detect import detect_profile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TTT = os.path.join(os.path.dirname(sys.executable), "ttt")


@pytest.fixture
def marker():
    """A path the program creates when it runs: in /tmp, which the program's own uid can write without bwrap."""
    path = f"/tmp/ttt-isolation-{uuid.uuid4().hex}"
    yield path
    if os.path.exists(path):
        os.unlink(path)


def in_fresh_process(code: str, disable: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TTT_SANDBOX_DISABLE": disable, "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_this_host_keeps_strict(profile):
    """CI and a machine set up by scripts/setup.sh (root, bubblewrap, util-linux, libseccomp, cgroups)."""
    if os.geteuid() != 0 or os.environ.get("TTT_SANDBOX_DISABLE"):
        pytest.skip("strict needs root here (own uid per evaluation)")
    assert isolation.missing(profile, "strict") == [] and isolation.strongest(profile) == "strict"


@pytest.mark.parametrize("disabled,unmet,strongest", [
    ({"bwrap"}, ["namespaces", "disk"], "minimal"),
    ({"seccomp"}, ["seccomp"], "minimal"),
    ({"uid_drop"}, ["own_uid"], "namespaces"),
    ({"cgroup_memory"}, ["memory"], "namespaces"),
    ({"cgroup_pids", "prlimit"}, ["pids"], "namespaces"),
])
def test_each_level_is_a_set_of_guarantees(profile, disabled, unmet, strongest):
    if isolation.strongest(profile) != "strict":
        pytest.skip("needs a host that keeps strict, to take layers away from")
    weaker = detect_profile(disabled)
    assert isolation.missing(weaker, "strict") == unmet and isolation.strongest(weaker) == strongest
    error = isolation.refusal(weaker, "strict")
    line = str(error)
    assert "\n" not in line and line.startswith("sandbox_isolation=strict cannot be kept on this host")
    assert all(isolation.GUARANTEES[g][0] in line for g in unmet)
    assert f"remove {sorted(disabled)[0]} from it" in line or "needs bwrap" in line  # the fix, here: the variable
    assert f"accept a weaker level by name: sandbox_isolation={strongest} (" in line


def test_the_fix_names_the_package_or_the_setting():
    base = detect_profile(set())
    cases = {  # the reason a layer is off (as detection words it) -> what the line tells the user to do
        "`bwrap` not installed (scripts/install_sandbox_tools.sh)":
            "install bubblewrap: bash scripts/install_sandbox_tools.sh",
        "self-test failed with it on (setting up uid map: Permission denied)":
            "bwrap fails here (self-test failed with it on (setting up uid map: Permission denied))",
    }
    for reason, fix in cases.items():
        line = str(isolation.refusal(base.without("bwrap", reason), "strict"))
        assert fix in line and "needs bwrap (above)" in line, line
    if os.geteuid() != 0:
        assert "unprivileged_userns_clone" in line  # without root, bwrap needs user namespaces
    no_cgroup = base.without("cgroup_memory", "no writable cgroup hierarchy for it (no delegation)")
    assert "a writable memory cgroup: run as root on the host, or delegate one" in str(
        isolation.refusal(no_cgroup, "strict"))
    with pytest.raises(ValueError, match="must be one of strict, namespaces, minimal"):
        isolation.check_name("none")


def test_strict_refuses_without_bwrap_and_a_named_weaker_level_runs(marker):
    result = in_fresh_process(f"""
        import json
        from envs.code_env import CodeEnv
        from envs.pool import VerifierPool
        from envs.sandbox import IsolationError, SandboxJob, isolation, run_sandboxed
        from envs.toy_digits import ToyDigitsEnv
        src = "import os\\nopen({marker!r}, 'w').close()\\ndef main():\\n    return os.getuid()\\n"
        out = {{}}
        try:
            run_sandboxed(SandboxJob(src, "main", result="json"))
        except IsolationError as e:
            out["run"] = str(e)
        out["ran_under_strict"] = __import__("os").path.exists({marker!r})
        with isolation.level("minimal"):
            out["minimal"] = run_sandboxed(SandboxJob(src, "main", result="json")).status
        code = CodeEnv(families=["lis"], problems_per_family=1, timeout_s=10)
        try:
            VerifierPool(code, backend="local")
        except IsolationError as e:
            out["pool"] = str(e)
        pool = VerifierPool(code, backend="local", isolation="minimal")
        answer = "```python\\ndef longest_increasing(nums):\\n    return 0\\n```"
        r = pool.evaluate([answer], code.initial_states())[0]
        out["pool_minimal"] = [pool.isolation, r.status, r.extra.get("sandbox_isolation")]
        toy = ToyDigitsEnv()  # runs no program: no level, no check
        toy_pool = VerifierPool(toy, backend="local")
        out["toy"] = [toy_pool.isolation, toy_pool.evaluate(["123"], toy.initial_states())[0].status]
        print(json.dumps(out))
    """, disable="bwrap")
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("run", "pool"):
        assert out[key].startswith("sandbox_isolation=strict cannot be kept on this host") and "bwrap" in out[key]
    assert out["ran_under_strict"] is False  # refused before the program started
    assert out["minimal"] == "ok" and os.path.exists(marker)  # ... and it ran once the weaker level was named
    assert out["pool_minimal"] == ["minimal", "ok", "minimal"]  # the level each verdict was produced under
    assert out["toy"][0] is None and out["toy"][1] in ("ok", "invalid", "format_error")


@pytest.mark.parametrize("level,code", [("strict", 2), ("minimal", 0)])
def test_ttt_verify_follows_the_same_rule(tmp_path, marker, level, code):
    program = tmp_path / "prog.py"
    program.write_text(f"import numpy as np\nopen({marker!r}, 'w').close()\n\ndef run_packing():\n"
                       "    k, r = 6, 1 / 12\n"
                       "    c = np.array([[(i % k) * 2 * r + r, (i // k) * 2 * r + r] for i in range(26)])\n"
                       "    return c, np.full(26, r), 0.0\n")
    env = {**os.environ, "TTT_SANDBOX_DISABLE": "bwrap", "PYTHONPATH": REPO}
    proc = subprocess.run([TTT, "verify", "--env", "circle_packing", "--n", "26", "--sandbox-isolation", level,
                           str(program)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1, (proc.stdout, proc.stderr[-2000:])
    record = json.loads(lines[0])
    if level == "strict":
        assert record["status"] == "error" and not os.path.exists(marker)
        assert record["message"].startswith("--sandbox-isolation strict cannot be kept on this host")
        assert "accept a weaker level by name: --sandbox-isolation minimal" in record["message"]
    else:
        assert record["status"] == "ok" and record["extra"]["sandbox_isolation"] == "minimal" and os.path.exists(marker)
