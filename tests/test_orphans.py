"""No process of a run outlives it: a real `ttt train` (vLLM sampler or HF sampler, Ray verifiers) killed with
SIGKILL mid-run leaves nothing behind within a few seconds (vLLM's EngineCore, Ray's raylet / gcs_server /
agents / workers, resource_tracker, wandb, the watchdog itself), and the run resumes. A normal exit and
SIGTERM leave nothing either.

A run's processes are found as the trainer's watchdog does not rely on alone: every descendant of the `ttt`
process (walked by ppid while it lives) plus every process whose environment carries TTT_RUN_ID=<its pid>-...
Other agents may run Ray or vLLM on this machine at the same time, so processes are never matched by name."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TTT = str(Path(sys.executable).with_name("ttt"))
BASE = ["+experiment=demo", "steps=50", "progress=false"]
ROOT = str(Path(__file__).resolve().parents[1])

# A process that starts the watchdog, then children of every kind a run has, then waits to be killed.
RUN_LIKE = f"""
import os, subprocess, sys, time
sys.path.insert(0, {ROOT!r})
from trainer import supervisor
supervisor.start()
quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
subprocess.Popen(["sleep", "300"], **quiet)                              # a child (marked)
subprocess.Popen(["sleep", "301"], start_new_session=True, **quiet)      # in its own session, as Ray's (marked)
subprocess.run(["sh", "-c", "sleep 302 &"], **quiet)                     # a daemon, orphaned at once (marked)
subprocess.Popen(["sleep", "303"], env={{}}, **quiet)                      # no environment, as a sandbox
if os.fork() == 0:                                                       # forked, not exec'd, as vLLM's engine
    time.sleep(300)
    os._exit(0)
print("ready", flush=True)
time.sleep(300)
"""


def _stat(pid: int) -> tuple[int, int, str, str] | None:
    """(ppid, start time, state, comm), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    rp = stat.rindex(b")")
    fields = stat[rp + 2:].split()
    return int(fields[1]), int(fields[19]), fields[0].decode(), stat[stat.index(b"(") + 1:rp].decode()


def _name(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmdline = ""
    comm = (_stat(pid) or (0, 0, "", ""))[3]
    return f"{comm} {cmdline[:100]}"


def _marked(pid: int, run_pid: int) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(e.startswith(f"TTT_RUN_ID={run_pid}-".encode()) for e in env)


def _table() -> dict[int, tuple[int, int, str, str]]:
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))) is not None:
            table[int(name)] = st
    return table


def _run_processes(run_pid: int) -> dict[int, tuple[int, str]]:
    """pid -> (start time, name) of the live processes that belong to the run (not the run itself)."""
    table = _table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in table.items():
        children.setdefault(ppid, []).append(pid)
    found = {pid for pid in table if pid != run_pid and _marked(pid, run_pid)}
    todo = [run_pid, *found]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {pid: (table[pid][1], _name(pid)) for pid in found if table[pid][2] not in ("Z", "X")}


def _alive(procs: dict[int, tuple[int, str]]) -> dict[int, str]:
    """Those of `procs` that still run (same pid, same start time, not a zombie)."""
    left = {}
    for pid, (started, name) in procs.items():
        st = _stat(pid)
        if st is not None and st[1] == started and st[2] not in ("Z", "X"):
            left[pid] = name
    return left


def _train(out: Path, *extra: str, stderr_file: Path | None = None) -> subprocess.Popen:
    """`stderr_file`: stderr to a file, as in a Slurm log (the watchdog reports an abrupt end there, never
    to a pipe)."""
    env = {**os.environ, "TTT_DEBUG": "", "OMP_NUM_THREADS": "1"}
    stderr = subprocess.PIPE if stderr_file is None else open(stderr_file, "w")  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen([TTT, "train", *BASE, f"out={out}", *extra], stdout=subprocess.PIPE,
                                stderr=stderr, text=True, env=env)
    finally:
        if stderr_file is not None:
            stderr.close()


def _wait_for_step(proc: subprocess.Popen, out: Path, step: int, timeout: float = 300.0) -> None:
    rollouts, deadline = out / "rollouts.jsonl", time.monotonic() + timeout
    while not (rollouts.exists() and f'"step": {step},' in rollouts.read_text()):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.2)


def _assert_all_gone(run_pid: int, procs: dict[int, tuple[int, str]], t0: float, within_s: float = 8.0) -> float:
    """Every process seen during the run, and every process carrying its marker, has ended `within_s` after
    t0 (time.monotonic() when the run ended); returns how long that took."""
    while True:
        left = _alive(procs)
        left.update({pid: name for pid, (_, name) in _run_processes(run_pid).items()})
        if not left:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < within_s, f"left running after {within_s} s: {left}"
        time.sleep(0.1)


def _has(procs: dict[int, tuple[int, str]], *needles: str) -> None:
    names = [name for _, name in procs.values()]
    for needle in needles:
        assert any(needle in name for name in names), f"no {needle!r} among the run's processes: {names}"


def _kill_mid_run_then_resume(tmp_path: Path, *extra: str, expect: tuple[str, ...],
                              stderr_file: Path | None = None) -> None:
    proc = _train(tmp_path, *extra, stderr_file=stderr_file)
    try:
        _wait_for_step(proc, tmp_path, 2)
        time.sleep(1.5)  # every child has started (the watchdog needs no such wait: it tracks by construction)
        procs = _run_processes(proc.pid)
        _has(procs, "ttt-watchdog", "raylet", "gcs_server", "DashboardAgent", "RuntimeEnvAgent", "ray::",
             *expect)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
    t0 = time.monotonic()
    proc.communicate(timeout=60)  # stdout / stderr reach EOF once every child holding them is gone
    took = _assert_all_gone(proc.pid, procs, t0)
    print(f"{len(procs)} processes of the run before SIGKILL, 0 left {took:.1f} s after it")
    if stderr_file is not None:  # the run could not say it; its watchdog did, once, as its last line
        last = stderr_file.read_text().strip().splitlines()[-1]
        assert last.startswith(f"ttt: error: the run (pid {proc.pid}) ended abruptly") and \
            last.endswith("rerun the same command with resume=true"), last

    resumed = _train(tmp_path, "resume=true", "steps=4", *extra)
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-3000:]
    assert "resumed" in stdout
    _assert_all_gone(resumed.pid, {}, time.monotonic())


@pytest.mark.parametrize("user", ["root", "unprivileged"])
def test_the_watchdog_kills_every_kind_of_child_of_a_killed_process(user):
    command = [sys.executable, "-c", RUN_LIKE]
    if user == "unprivileged":
        if os.getuid() != 0 or shutil.which("setpriv") is None:
            pytest.skip("needs root and setpriv to run as nobody")
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]  # exec: same pid
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.5)  # every child has started (the watchdog needs no such wait: it tracks by construction)
        procs = _run_processes(proc.pid)
        names = [name.split()[0] for _, name in procs.values()]
        assert len(names) == 6 and names.count("sleep") == 4 and "ttt-watchdog" in names, names
    finally:
        os.kill(proc.pid, signal.SIGKILL)
    t0 = time.monotonic()
    proc.wait()
    took = _assert_all_gone(proc.pid, procs, t0, within_s=5.0)
    print(f"{user}: {len(procs)} processes before SIGKILL, 0 left {took:.1f} s after it")


# A process that starts the watchdog, then forks a child that detaches a grandchild at once (a new session, no
# environment: no TTT_RUN_ID) and exits; the run is killed right after, long before a 1 s poll would come round.
GAP = f"""
import os, sys, time
sys.path.insert(0, {ROOT!r})
from trainer import supervisor
supervisor.start()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execve("/bin/sleep", ["sleep", sys.argv[1]], {{}})
    os._exit(0)
os.wait()
print("forked", flush=True)
time.sleep(300)
"""


def _sleeping(marker: str) -> list[int]:
    """Live `sleep MARKER` processes."""
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{name}/cmdline").read_bytes() == f"sleep\0{marker}\0".encode():
                found.append(int(name))
        except OSError:
            pass
    return [pid for pid in found if (_stat(pid) or (0, 0, "Z"))[2] not in ("Z", "X")]


@pytest.mark.parametrize("user,tracking", [("root", "cgroup,rlimit"), ("root", "cgroup"), ("root", "rlimit"),
                                           ("unprivileged", "cgroup,rlimit"), ("root", "none")])
def test_a_process_detached_just_before_a_kill_dies_with_the_run(user, tracking):
    """Every descendant is the run's by construction: its cgroup (root; an unprivileged run has none) and the
    rlimit marker each catch the orphan alone. `none` is the control: with neither, it survives the kill."""
    marker = f"{301 + int(time.time() * 1000) % 1000}.{os.getpid()}"
    command = [sys.executable, "-c", GAP, marker]
    if user == "unprivileged":
        if os.getuid() != 0 or shutil.which("setpriv") is None:
            pytest.skip("needs root and setpriv to run as nobody")
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    elif os.getuid() != 0 and "cgroup" in tracking:
        pytest.skip("a cgroup of the run's own needs root (or a delegated cgroup) here")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "TTT_WATCHDOG_TRACKING": tracking})
    try:
        assert proc.stdout.readline().strip() == "forked"
        deadline = time.monotonic() + 5
        while not _sleeping(marker) and time.monotonic() < deadline:  # its exec takes a moment
            time.sleep(0.002)
        orphans = _sleeping(marker)
        assert len(orphans) == 1 and _stat(orphans[0])[0] != proc.pid  # detached: not the run's child
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # within milliseconds of the fork
    proc.wait()
    deadline = time.monotonic() + 8
    while _sleeping(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _sleeping(marker)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert (left == []) == (tracking != "none"), (tracking, left)


def test_sigkill_of_a_vllm_ray_run_leaves_no_process_and_resumes(tmp_path):
    # wandb-core is killed too when it runs, but under load it may start after step 2: not required here
    _kill_mid_run_then_resume(tmp_path, expect=("VLLM::EngineCor", "resource_tracker"))


def test_sigkill_of_an_hf_ray_run_leaves_no_process_and_resumes(tmp_path):
    _kill_mid_run_then_resume(tmp_path, "sampler=hf", "verifier_backend=ray", "wandb_mode=disabled", expect=(),
                              stderr_file=tmp_path / "stderr.log")


def test_normal_exit_and_sigterm_leave_no_process(tmp_path):
    """... and no abrupt-end line in their stderr (a file here): they ended on purpose."""
    done_log, term_log = tmp_path / "done.log", tmp_path / "term.log"
    done = _train(tmp_path / "done", "sampler=hf", "steps=2", "wandb_mode=disabled", stderr_file=done_log)
    time.sleep(0.5)
    seen = {}
    while done.poll() is None:  # what the run started, seen from outside while it ran
        seen.update(_run_processes(done.pid))
        time.sleep(0.5)
    t0 = time.monotonic()
    done.communicate()
    assert done.returncode == 0, done_log.read_text()[-3000:]
    _has(seen, "raylet")
    _assert_all_gone(done.pid, seen, t0)

    term = _train(tmp_path / "term", "sampler=hf", "wandb_mode=disabled", stderr_file=term_log)
    _wait_for_step(term, tmp_path / "term", 1)
    time.sleep(1.5)
    procs = _run_processes(term.pid)
    term.send_signal(signal.SIGTERM)
    term.communicate(timeout=120)
    assert term.returncode == 143, term_log.read_text()[-3000:]
    _assert_all_gone(term.pid, procs, time.monotonic())
    for log in (done_log, term_log):  # the watchdog has ended (all gone above), so its line would be there
        assert "ended abruptly" not in log.read_text(), log


# A process that starts the watchdog and then ends as argv[1] says.
ENDS = f"""
import os, sys, time
sys.path.insert(0, {ROOT!r})
from trainer import supervisor
supervisor.start("rerun it")
print("ready", flush=True)
how = sys.argv[1]
if how == "native":      # as Ray's core worker ends a driver whose raylet died: no Python exit at all
    os._exit(1)
if how == "finished":    # as `ttt train` ends after its last line (os._exit, past C++ static destructors)
    supervisor.finished()
    os._exit(0)
if how == "forked":      # a forked child (vLLM's engine) exits normally, then the run is killed
    if os.fork() == 0:
        sys.exit(0)
    os.wait()
    os.kill(os.getpid(), 9)
if how == "error":       # an error the run reported (a traceback or a ttt: error: line) and a normal exit
    sys.exit("ttt: error: something named, with its fix")
"""


@pytest.mark.parametrize("how,abrupt", [("native", True), ("forked", True), ("finished", False), ("error", False)])
def test_an_abrupt_end_is_reported_in_one_line(how, abrupt, tmp_path):
    log = tmp_path / "stderr.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", ENDS, how], stdout=subprocess.PIPE, stderr=stderr, text=True)
    stdout, _ = proc.communicate(timeout=60)
    assert stdout.strip() == "ready"
    deadline = time.monotonic() + 10
    while abrupt and "ended abruptly" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)  # the watchdog writes it right after the run ends
    time.sleep(0.3)
    lines = [line for line in log.read_text().splitlines() if "ended abruptly" in line]
    if abrupt:
        assert lines == [f"ttt: error: the run (pid {proc.pid}) ended abruptly, without finishing or reporting an "
                         "error: it was killed (kill -9, out of memory) or a component ended it (e.g. Ray's raylet "
                         "died); its checkpoints are kept: rerun it"], log.read_text()
    else:
        assert lines == [], log.read_text()


def test_an_abrupt_end_is_never_written_to_a_pipe():
    """A caller reading stderr to EOF (subprocess.run(capture_output=True)) gets EOF when the run ends: the
    watchdog holds no pipe of the run, and has nothing to say there."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", ENDS, "native"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr == "" and time.monotonic() - t0 < 10
