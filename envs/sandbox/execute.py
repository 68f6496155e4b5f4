"""Run one untrusted program in a sandbox and bring back its outputs as validated data (the parent's side;
envs/sandbox/runner.py is the side inside the sandbox).

    outcome = run_with_profile(SandboxJob(source, entry="run_packing"), Limits(timeout_s=60), profile)

Callers use envs.sandbox.run_sandboxed, which supplies this host's profile (envs/sandbox/detect.py).
The program runs in its own process tree (layers: envs/sandbox/command.py; availability:
envs/sandbox/detect.py), as an unprivileged user without network, environment or view of our /proc, with
CPU-time / address-space / file-size limits, memory, pids and cpu cgroups where the host has them (CPU
affinity otherwise), a size-limited private writable area, and dies with us. Its outputs (stdout, stderr, the
runner's status and result) are pipes we read while it runs, each up to a cap: no host file it could grow.
At the deadline the whole tree is killed (cgroup.kill / freezer, process group, pid namespace), and it is
killed again unconditionally before its outputs are read. Outcome order: timeout -> oom -> crash -> result.
Program faults come back as an outcome record, never as an exception.
"""

from __future__ import annotations

import errno
import functools
import itertools
import json
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.sandbox import command as cmd
from envs.sandbox import identity
from envs.sandbox import spawner as sandbox_spawner
from envs.sandbox.cleanup import remove_tree
from envs.sandbox.profile import SandboxProfile
from envs.sandbox.result_channel import ChannelError, OutputPipes, parse_json, parse_npz

STATUS_CAP = 64 << 10
DRIBBLES = 16  # wakeups in a row with less than a full pipe, after which the parent reads at most every 5 ms
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class Limits:
    """Per-run resource limits. The address space defaults to 4x the memory budget (VmPeak >> RSS).
    file_size_mb bounds each file the program writes (RLIMIT_FSIZE) and how much of stdout and of stderr is
    read (past that its writes there fail with EPIPE).

    disk_mb bounds everything the program can write (a private tmpfs: /tmp with the cwd /job, and /dev/shm).
    tmpfs pages and inodes are memory charged to the run's memory cgroup, so that cgroup gets
    memory_mb + disk_mb: filling the disk never eats the memory budget, and the host's bound per run is the sum.
    cpus is enforced (cgroup cpu quota, else CPU affinity), not only used for thread-pool sizes.
    """

    timeout_s: float = 60.0
    cpus: int = 1
    memory_mb: int = 2048
    address_space_mb: int | None = None
    max_pids: int = 64
    file_size_mb: int = 64
    max_open_files: int = 256
    disk_mb: int = 512
    max_result_bytes: int = 8 << 20
    tail_chars: int = 500

    @property
    def as_bytes(self) -> int:
        return (self.address_space_mb or 4 * self.memory_mb) << 20


@dataclass
class SandboxJob:
    """What to run: the program, its entry function and how to call it.

    mode "single": entry(*args, **kwargs, **{name: inputs[name] for name in input_kwargs}) once; the result is
    npz (numeric arrays; a tuple/list is split into r0, r1, ... unless split_result is False) or json.
    mode "each": entry(*call) for every call in `calls`; json list of {"value": ...} / {"error": ...}.
    `inject` names input arrays defined as module globals before the program's body runs.
    """

    source: str
    entry: str
    mode: str = "single"
    result: str = "npz"
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    calls: list | None = None
    inputs: dict = field(default_factory=dict)
    inject: tuple = ()
    input_kwargs: tuple = ()
    split_result: bool = True  # npz: a returned tuple/list is several arrays (False: it is one array)


@dataclass
class SandboxOutcome:
    status: str  # ok | format_error | runtime_error | timeout | oom | invalid
    message: str = ""
    arrays: list | None = None  # npz results, r0..rN
    value: Any = None  # json results
    stdout_tail: str = ""
    stderr_tail: str = ""
    wall_s: float = 0.0
    returncode: int | None = None
    pids_limit_hit: bool = False
    cpu_throttled_s: float = 0.0  # time held back by the cpu quota (cgroup cpu.stat); 0 without one

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o644)


def _output_pipes(limits: Limits) -> OutputPipes:
    """stdout and stderr (their tails kept), the runner's status and its result, each read up to a cap."""
    logs = limits.file_size_mb << 20
    return OutputPipes({"stdout": logs, "stderr": logs, "status": STATUS_CAP, "result": limits.max_result_bytes},
                       tails={"stdout": 4 * limits.tail_chars, "stderr": 4 * limits.tail_chars})


def _prepare(job: SandboxJob, limits: Limits, profile: SandboxProfile, run_dir: str,
             channels: dict[str, int], uid: int) -> cmd.RunPaths:
    job_dir = os.path.join(run_dir, "job")
    os.mkdir(job_dir, 0o700)
    in_bwrap = bool(profile.bwrap)
    spec = {**channels, "entry": job.entry, "mode": job.mode, "result": job.result, "args": job.args, "kwargs": job.kwargs,
            "calls": job.calls, "inject": list(job.inject), "input_kwargs": list(job.input_kwargs),
            "max_result_bytes": limits.max_result_bytes, "inputs": "inputs.npz" if job.inputs else None,
            "sys_path": library_paths(), "split": job.split_result}
    if profile.seccomp_path and not in_bwrap:  # with bwrap the kernel loads it before exec (--seccomp FD)
        spec["seccomp"] = profile.seccomp_path
    if not profile.prlimit:  # the runner applies them itself before any candidate code
        spec["rlimits"] = {"as": limits.as_bytes, "cpu": _cpu_seconds(limits),
                           "fsize": limits.file_size_mb << 20, "nofile": limits.max_open_files}
    _write(os.path.join(job_dir, "program.py"), job.source.encode("utf-8", "surrogatepass"))
    _write(os.path.join(job_dir, "call.json"), json.dumps(spec).encode())
    if job.inputs:
        with open(os.path.join(job_dir, "inputs.npz"), "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in job.inputs.items()})
        os.chmod(os.path.join(job_dir, "inputs.npz"), 0o644)
    if profile.drop_uid:
        os.chown(job_dir, uid, uid)  # the cwd of a run without bwrap
    if in_bwrap:  # its /etc/passwd and /etc/group name its uid (getpass, pwd.getpwuid work as usual)
        for name, text in cmd.account_files(uid).items():
            _write(os.path.join(run_dir, name), text.encode())
    return cmd.RunPaths(run_dir, job_dir, profile.runner_path, profile.seccomp_path)


@functools.lru_cache(maxsize=1)
def library_paths() -> list[str]:
    """This interpreter's site-packages dirs: the sandbox starts with -S and adds exactly these."""
    import site

    return [p for p in site.getsitepackages() if os.path.isdir(p)]


def _cpu_seconds(limits: Limits) -> int:
    # RLIMIT_CPU sums all threads of a process; the wall-clock timer is the real deadline (SANDBOX.md G9)
    return int(limits.timeout_s * max(1, limits.cpus)) + 2


def nproc_limit(limits: Limits) -> int:
    """RLIMIT_NPROC when there is no pids cgroup: it counts every process of the evaluation's uid on the host,
    which only this evaluation uses (envs/sandbox/identity.py)."""
    return limits.max_pids


_next_core = itertools.count()


def _pick_cores(n: int) -> list[int]:
    """`n` of our allowed cores, rotating so that concurrent runs spread over the machine."""
    allowed = sorted(os.sched_getaffinity(0))
    start = next(_next_core) * n
    return sorted({allowed[(start + i) % len(allowed)] for i in range(min(max(1, n), len(allowed)))})


def _argv(paths: cmd.RunPaths, limits: Limits, profile: SandboxProfile, cgroups, seccomp_fd: int | None, uid: int):
    env = cmd.sandbox_env(limits.cpus, "/job" if profile.bwrap else paths.job_dir)
    argv: list[str] = cmd.cgroup_launcher(cgroups.procs_files) if cgroups else []
    if profile.taskset and not (cgroups and cgroups.cpu_limited):
        argv += cmd.affinity_args(profile.taskset, _pick_cores(limits.cpus))
    if profile.prlimit:
        pids_cgroup = bool(profile.cgroups and profile.cgroups.pids)
        nproc = None if pids_cgroup or not profile.drop_uid else nproc_limit(limits)
        argv += cmd.prlimit_args(profile.prlimit, _cpu_seconds(limits), limits.as_bytes,
                                 limits.file_size_mb << 20, limits.max_open_files, nproc)
    inner_drop = cmd.setpriv_drop(profile.setpriv, uid) if profile.drop_uid else []
    if profile.bwrap:
        if profile.setpriv:
            argv += [profile.setpriv, "--pdeathsig", "KILL"]
        argv += cmd.bwrap_args(profile.bwrap, paths, env, limits.disk_mb, profile.as_root, profile.drop_uid,
                               profile.bwrap_tmpfs_size, seccomp_fd)
        argv += inner_drop + [sys.executable, "-I", "-S", "/sandbox/runner.py", "/job"]
        return argv, {"PATH": env["PATH"]}, paths.run_dir
    argv += inner_drop or ([profile.setpriv, "--pdeathsig", "KILL"] if profile.setpriv else [])
    argv += [sys.executable, "-I", "-S", paths.runner, paths.job_dir]
    return argv, env, paths.job_dir


def _wait_exit(proc: subprocess.Popen, timeout_s: float, pipes: OutputPipes) -> bool:
    """True if the child exited within the time limit; its outputs are read meanwhile (a full pipe would stall
    it). A pidfd wakes us at once (Popen.wait(timeout) polls with sleeps of up to 50 ms, which would dominate
    the cost of a short evaluation); without one, the exit is checked every 20 ms."""
    deadline = time.monotonic() + timeout_s
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = None
    poller = select.poll()
    for fd in pipes.read_fds + ([pidfd] if pidfd is not None else []):
        poller.register(fd, select.POLLIN)
    dribbles = 0  # wakeups in a row that each found less than a full pipe
    try:
        while True:
            if pidfd is None and proc.poll() is not None:
                return True
            left_ms = math.ceil((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                return False
            got = 0
            for fd, _ in poller.poll(left_ms if pidfd is not None else min(20, left_ms)):
                if fd == pidfd:
                    return True
                if fd in pipes.read_fds:
                    got += pipes.read(fd)
                if fd not in pipes.read_fds:  # at its end or over its cap
                    poller.unregister(fd)
            dribbles = dribbles + 1 if 0 < got < 1 << 16 else 0
            if dribbles >= DRIBBLES:  # a program writing byte by byte must not keep us busy: let its pipes fill
                time.sleep(0.005)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _kill_tree(proc: subprocess.Popen, cgroups) -> None:
    if cgroups is not None:
        cgroups.kill()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: the group id is the child's pid
    except OSError:
        pass
    proc.kill()


def run_with_profile(job: SandboxJob, limits: Limits, profile: SandboxProfile) -> SandboxOutcome:
    """Run `job` under `limits` with the protection layers of `profile`."""
    t0 = time.perf_counter()
    run_dir = tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=profile.runs_dir)
    os.chmod(run_dir, 0o711)
    cgroups, seccomp_fd, uid_lease = None, None, None
    pipes = _output_pipes(limits)
    try:
        uid_lease = identity.lease(profile.uids_dir) if profile.drop_uid else None
        uid = uid_lease.uid if uid_lease else os.getuid()
        channels = {"status_fd": pipes.write_fds["status"], "result_fd": pipes.write_fds["result"]}
        paths = _prepare(job, limits, profile, run_dir, channels, uid)
        if profile.cgroups is not None:
            # the private tmpfs is memory charged to this cgroup: give it room on top of the memory budget
            memory = (limits.memory_mb + (limits.disk_mb if profile.bwrap else 0)) << 20
            cgroups = profile.cgroups.create(uuid.uuid4().hex[:12], memory, limits.max_pids, limits.cpus)
        seccomp_fd = os.open(profile.seccomp_path, os.O_RDONLY) if profile.bwrap and profile.seccomp_path else None
        argv, env, cwd = _argv(paths, limits, profile, cgroups, seccomp_fd, uid)
        proc = sandbox_spawner.popen(argv, stdin=subprocess.DEVNULL, stdout=pipes.write_fds["stdout"],
                                     stderr=pipes.write_fds["stderr"], env=env, cwd=cwd, start_new_session=True,
                                     close_fds=True,
                                     pass_fds=tuple(channels.values()) + ((seccomp_fd,) if seccomp_fd else ()))
        pipes.close_write_ends()
        timed_out = not _wait_exit(proc, limits.timeout_s, pipes)
        _kill_tree(proc, cgroups)  # unconditionally: setsid escapees must not write to the channels while we read
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        pipes.drain()
        outcome = _classify(pipes, limits, job, proc.returncode, timed_out, cgroups)
        outcome.cpu_throttled_s = cgroups.cpu_throttled_s() if cgroups is not None else 0.0
        outcome.stdout_tail = pipes.text("stdout", limits.tail_chars)
        outcome.stderr_tail = pipes.text("stderr", limits.tail_chars)
    finally:
        pipes.close()
        if seccomp_fd is not None:
            os.close(seccomp_fd)
        if cgroups is not None:
            cgroups.destroy()
        if uid_lease is not None:  # without a cgroup kill or a pid namespace, its uid finds the whole tree
            uid_lease.release(sweep=not (profile.bwrap or (cgroups is not None and cgroups.support.tree_kill)))
        remove_tree(run_dir)  # never raises; what it cannot delete, the reaper deletes after we are gone
    outcome.wall_s = time.perf_counter() - t0
    return outcome


def _classify(pipes: OutputPipes, limits: Limits, job: SandboxJob, rc: int | None, timed_out: bool,
              cgroups) -> SandboxOutcome:
    """Decide the status before looking at any result: timeout -> oom -> crash -> result."""
    pids_hit = bool(cgroups and cgroups.pids_limit_hits())
    base = dict(returncode=rc, pids_limit_hit=pids_hit)
    if timed_out:
        return SandboxOutcome("timeout", f"exceeded the {limits.timeout_s:g} s time limit and was killed", **base)
    if cgroups is not None and cgroups.oom_kills() > 0:
        return SandboxOutcome("oom", f"killed by the {limits.memory_mb} MB memory limit (+{limits.disk_mb} MB for its "
                                     "files: tmpfs pages and inodes are memory)", **base)
    if "result" in pipes.over_cap:  # only the program itself writes past the cap: the runner checks it first
        return SandboxOutcome("invalid", f"unusable result: over the {limits.max_result_bytes} byte cap", **base)
    try:
        if "status" in pipes.over_cap:
            raise ChannelError(f"over the {STATUS_CAP} byte cap")
        raw = bytes(pipes.data["status"])
        status = parse_json(raw) if raw else None
    except ChannelError as e:
        return SandboxOutcome("runtime_error", f"unreadable status report ({e})", **base)
    if isinstance(status, dict) and status.get("error_type") == "MemoryError":
        return SandboxOutcome("oom", f"MemoryError under the {limits.as_bytes >> 20} MB address-space limit", **base)
    if rc is not None and rc in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return SandboxOutcome("timeout", "exceeded its CPU-time limit", **base)
    if not isinstance(status, dict) or not isinstance(status.get("phase"), str):
        how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit code {rc}"
        return SandboxOutcome("runtime_error", f"the program ended without reporting a result ({how})", **base)
    if status.get("ok") is not True or status["phase"] != "done":
        error = str(status.get("error", "unknown error"))[:500]
        phase = status["phase"]
        if status.get("errno") in DISK_FULL:
            return SandboxOutcome("runtime_error", f"disk quota exceeded: the program filled its {limits.disk_mb} MB "
                                                   f"writable area ({error})", **base)
        kind = {"compile": "format_error", "entry": "format_error", "encode": "invalid"}.get(phase, "runtime_error")
        prefix = {"compile": "the program does not compile", "entry": "missing entry point",
                  "encode": "the return value is not plain data", "setup": "sandbox setup failed", "write": "could not hand over the result",
                  "import": "the program raised while loading", "call": "the program raised"}.get(phase, phase)
        return SandboxOutcome(kind, f"{prefix}: {error}", **base)
    return _read_result(bytes(pipes.data["result"]), job.result, limits, base)


def _read_result(data: bytes, result_format: str, limits: Limits, base: dict) -> SandboxOutcome:
    """The result channel's bytes as data of the format that was asked for (empty = no result)."""
    if not data:
        return SandboxOutcome("invalid", "the program reported success but left no result", **base)
    try:
        if result_format == "json":
            return SandboxOutcome("ok", value=parse_json(data), **base)
        return SandboxOutcome("ok", arrays=parse_npz(data, limits.max_result_bytes), **base)
    except ChannelError as e:
        return SandboxOutcome("invalid", f"unusable result: {e}", **base)
    except Exception as e:  # noqa: BLE001 -- a parser bug the fuzz tests missed: still the program's verdict
        return SandboxOutcome("invalid", f"unusable result: the parser failed on it ({type(e).__name__}: "
                                         f"{str(e)[:200]})", **base)
