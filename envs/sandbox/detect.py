"""Which sandbox protections this host offers, decided once per process.

Detection is by trial, not by guess: tools are looked up, cgroups are probed, then the full stack runs a tiny
program; if that fails, layers are dropped one at a time (seccomp, bwrap, uid drop) until a self-test
passes. Each layer that is off carries its reason (profile.off); whether the result is good enough for a run
is the isolation level's check (envs/sandbox/isolation.py), which logs what is off once.
`TTT_SANDBOX_DISABLE=bwrap,seccomp,...` turns layers off on purpose (debugging, tests of the fallback).
The profile itself (which layers, and turning one off) is envs/sandbox/profile.py.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import stat
import tempfile

from envs.sandbox.cgroups import CgroupSupport
from envs.sandbox.cleanup import reap_dead_runs
from envs.sandbox.execute import Limits, SandboxJob, run_with_profile
from envs.sandbox.profile import LAYERS, SandboxProfile

_TOOL_DIRS = "/usr/bin:/bin:/usr/sbin:/sbin:/usr/local/bin"


def _private_dir(path: str, mode: int) -> str:
    """`path` as a real directory owned by us with `mode`; a squatted or symlinked one is refused."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise PermissionError(f"{path} is not a directory owned by uid {os.geteuid()}")
    os.chmod(path, mode)
    return path


def _install_file(lib_dir: str, name: str, data: bytes) -> str:
    """Content-addressed, world-readable copy (the sandbox uid must read it); atomic, shared by processes."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    path = os.path.join(lib_dir, f"{digest}-{name}")
    if not os.path.exists(path):
        fd, tmp = tempfile.mkstemp(dir=lib_dir)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return path


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=_TOOL_DIRS)


def _candidate_profile(disabled: set[str]) -> SandboxProfile:
    base = _private_dir(os.path.join(tempfile.gettempdir(), f"ttt_sandbox_{os.geteuid()}"), 0o711)
    lib_dir = _private_dir(os.path.join(base, "lib"), 0o755)
    runs_dir = _private_dir(os.path.join(base, "runs"), 0o711)
    uids_dir = _private_dir(os.path.join(base, "uids"), 0o700)
    with open(os.path.join(os.path.dirname(__file__), "runner.py"), "rb") as f:
        runner = f.read()
    runner_path = _install_file(lib_dir, "runner.py", runner)
    reap_dead_runs(runs_dir)  # run dirs of processes that died mid-run; never raises, whatever they hold
    off: dict[str, str] = {}
    cgroups = CgroupSupport.detect()
    for layer, have in (("cgroup_memory", cgroups.memory), ("cgroup_pids", cgroups.pids),
                        ("cgroup_kill", cgroups.tree_kill)):
        if not have:
            off[layer] = "no writable cgroup hierarchy for it (no delegation)"
    tools = {name: _which(name) for name in ("prlimit", "setpriv", "bwrap", "taskset")}
    if not cgroups.cpu:
        fallback = ("pinned to `cpus` cores with taskset" if tools["taskset"] else "taskset missing too: only")
        off["cgroup_cpu"] = (f"no writable cpu controller (no delegation): {fallback} + RLIMIT_CPU "
                             "(timeout x cpus CPU-seconds in total)")
    for name, layer in (("prlimit", "prlimit"), ("setpriv", "pdeathsig"), ("bwrap", "bwrap")):
        if not tools[name]:
            off[layer] = f"`{name}` not installed (scripts/install_sandbox_tools.sh)"
    drop_uid = os.geteuid() == 0 and bool(tools["setpriv"])
    if os.geteuid() != 0:
        off["uid_drop"] = "not root: the program runs as the worker's own uid"
    seccomp_path = None
    try:
        from envs.sandbox.seccomp import compiled_filter

        seccomp_path = _install_file(lib_dir, "seccomp.bpf", compiled_filter())
    except Exception as e:  # ImportError (pyseccomp) or OSError (libseccomp missing)
        off["seccomp"] = f"cannot compile the filter ({type(e).__name__}: {e})"
    tmpfs_size = False
    if tools["bwrap"]:
        import subprocess

        try:
            usage = subprocess.run([tools["bwrap"], "--help"], capture_output=True, text=True, timeout=10)
            tmpfs_size = "--size" in usage.stdout + usage.stderr
        except (OSError, subprocess.SubprocessError):
            pass
    if tools["bwrap"] and not tmpfs_size:
        off["disk_quota"] = "this bwrap has no --size (needs >= 0.8): the private tmpfs is unbounded"
    elif not tools["bwrap"]:
        off["disk_quota"] = "needs bwrap: without it the program writes to host dirs"
    profile = SandboxProfile(cgroups=cgroups if cgroups.any else None,
                             prlimit=tools["prlimit"], setpriv=tools["setpriv"], drop_uid=drop_uid,
                             bwrap=tools["bwrap"], bwrap_tmpfs_size=tmpfs_size, taskset=tools["taskset"],
                             seccomp_path=seccomp_path,
                             runner_path=runner_path, runs_dir=runs_dir, uids_dir=uids_dir, off=off)
    for layer in disabled:
        profile = profile.without(layer, "disabled by TTT_SANDBOX_DISABLE")
    return profile


def _self_test(profile: SandboxProfile) -> str | None:
    """None if a trivial program runs and reports through this profile, else the failure."""
    job = SandboxJob(source="def main():\n    return [1, 2]\n", entry="main", result="json")
    outcome = run_with_profile(job, Limits(timeout_s=20, memory_mb=512), profile)
    if outcome.status == "ok" and outcome.value == [1, 2]:
        return None
    return f"{outcome.status}: {outcome.message} {outcome.stderr_tail[-300:]}".strip()


def detect_profile(disabled: set[str] | None = None) -> SandboxProfile:
    """The strongest profile that passes the self-test on this host (uncached; see current_profile)."""
    profile = _candidate_profile(set(disabled or ()))
    failure = _self_test(profile)
    for layer in ("seccomp", "bwrap", "uid_drop", "pdeathsig", "prlimit", "cgroup_memory"):
        if failure is None:
            return profile
        if profile.layers()[layer]:
            profile = profile.without(layer, f"self-test failed with it on ({failure[:200]})")
            failure = _self_test(profile)
    if failure is not None:
        raise RuntimeError(f"the sandbox cannot run even a trivial program here: {failure}")
    return profile


@functools.lru_cache(maxsize=1)
def current_profile() -> SandboxProfile:
    """This process's profile, detected on first use. What is off is logged by the isolation check that uses it
    (envs/sandbox/isolation.py): a warning where a level is kept without some layers, nothing where the level is
    refused (its error says it)."""
    disabled = {x.strip() for x in os.environ.get("TTT_SANDBOX_DISABLE", "").split(",") if x.strip()}
    unknown = disabled - set(LAYERS)
    if unknown:
        raise ValueError(f"TTT_SANDBOX_DISABLE names unknown layers {sorted(unknown)}; known: {', '.join(LAYERS)}")
    return detect_profile(disabled)
