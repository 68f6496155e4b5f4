"""Every process a run starts dies with the run, also when the run is killed with SIGKILL (no handler runs).

Without this, `kill -9` of `ttt train` left vLLM's EngineCore, multiprocessing's resource_tracker and Ray's
raylet, gcs_server and dashboard / runtime-env agents running. PR_SET_PDEATHSIG reaches only direct children
(and fires when the spawning *thread* ends), Ray and vLLM spawn their own grandchildren, and cgroup v2's
cgroup.kill is missing on cgroup-v1 hosts and for unprivileged users. So `start()`, called before anything
else is spawned:

  1. forks a watchdog (its own session, so a terminal's SIGINT / SIGHUP does not reach it) that waits for
     the run process to end, however it ends: a pidfd of the run, or its parent pid changing where pidfds
     are unavailable (a pipe would not do: forked children such as vLLM's keep its write end open);
  2. marks the run: TTT_RUN_ID=<run pid>-<random> in os.environ, inherited by every process exec'd after
     this (Ray's daemons and workers, resource_tracker, wandb) and readable in /proc/PID/environ.

/proc/PID/environ shows the environment a process was exec'd with, and a process that sets its title
(vLLM's EngineCore, forked from the run) overwrites it; a child that clears its environment (a sandbox)
carries no marker either. So while the run lives the watchdog also notes the run's descendants, every
second. Once the run has ended it SIGKILLs every process that carries the marker, every process it noted
that still lives, and their descendants, until none is left.
resource_tracker is killed last, after a grace period: once its clients are gone it unlinks the shared
memory and semaphores they leaked, then exits by itself. After a normal exit or SIGTERM the run has already
stopped its children; the sweep then only catches leftovers. Works as root and unprivileged (own processes).

A run that ends without its interpreter finishing (kill -9, the OOM killer, or a component that ends the process
from C++: Ray's core worker exits when its raylet dies) cannot say anything itself. The run tells the watchdog
that it finished (`finished()`, or at interpreter exit) by one byte on a pipe; if the byte never came, the
watchdog writes one `ttt: error:` line saying so, with the way back (resume=true), to the run's stderr where
that is a terminal or a file (a Slurm log). Never to a pipe: a caller reading it to EOF would wait for us.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import secrets
import select
import signal
import stat
import time

MARKER = "TTT_RUN_ID"
TRACKER_GRACE_S = 3.0  # resource_tracker's own cleanup after its clients die
GIVE_UP_S = 20.0  # processes that survive this many seconds of SIGKILLs (uninterruptible sleep) are left
ABRUPT = ("ttt: error: the run (pid {pid}) ended abruptly, without finishing or reporting an error: it was killed "
          "(kill -9, out of memory) or a component ended it (e.g. Ray's raylet died); its checkpoints are kept: "
          "{hint}\n")
_finished_fd: list[int] = []  # the write end of the finished pipe, while the watchdog waits for it


def start(hint: str = "rerun the same command with resume=true") -> str:
    """Start the watchdog and mark this process's future children; returns the run id. Call once, early:
    before any child exists, and before threads (it forks). `hint`: what the abrupt-end line tells the user."""
    run_pid = os.getpid()
    run_id = f"{run_pid}-{secrets.token_hex(4)}"  # a new id also inside an enclosing run: a run of its own
    try:
        pidfd = os.pidfd_open(run_pid)  # opened here, before the fork: no window where the run is already gone
    except (AttributeError, OSError):  # old kernel, seccomp: fall back to watching the parent pid
        pidfd = None
    finished_r, finished_w = os.pipe()
    report = _report_fd()
    if os.fork() == 0:  # the watchdog; it never returns
        try:
            os.close(finished_w)
            _watch(run_pid, run_id, pidfd, finished_r, report, ABRUPT.format(pid=run_pid, hint=hint))
        finally:
            os._exit(0)
    for fd in (pidfd, finished_r, report):
        if fd is not None:
            os.close(fd)
    _finished_fd[:] = [finished_w]
    atexit.register(finished, run_pid)  # an interpreter that exits normally has reported whatever happened
    os.environ[MARKER] = run_id
    return run_id


def finished(run_pid: int | None = None) -> None:
    """The run ends on purpose (done, or its error reported): no abrupt-end line. Also called at interpreter
    exit; a no-op in forked children (their exit is not the run's) and without a watchdog."""
    if not _finished_fd or (run_pid is not None and os.getpid() != run_pid):
        return
    try:
        os.write(_finished_fd[0], b"1")
    except OSError:  # the watchdog is gone: nobody to tell
        pass


def _report_fd() -> int | None:
    """A duplicate of stderr if it is a terminal or a regular file (a Slurm log), else None."""
    try:
        mode = os.fstat(2).st_mode
        if os.isatty(2) or stat.S_ISREG(mode):
            return fcntl.fcntl(2, fcntl.F_DUPFD_CLOEXEC, 3)  # >= 3: stdio is re-pointed in the watchdog
    except OSError:
        pass
    return None


def _watch(run_pid: int, run_id: str, pidfd: int | None, finished_r: int, report: int | None,
           abrupt: str) -> None:
    os.setsid()
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)  # it must outlive the run; it ends by itself once the run has ended
    _detach_stdio(keep={fd for fd in (pidfd, finished_r, report) if fd is not None})
    _set_name(b"ttt-watchdog")
    seen: dict[int, int] = {}  # pid -> start time of the run's descendants seen while it lived
    while True:
        if pidfd is not None:
            ended = bool(select.select([pidfd], [], [], 1.0)[0])
        else:
            time.sleep(0.5)
            ended = os.getppid() != run_pid
        if ended:
            break
        table = _table()
        alive = {pid for pid, started in seen.items() if pid in table and table[pid][1] == started}
        seen = {pid: table[pid][1] for pid in alive | _descendants(table, {run_pid})}  # bounded: the living
    if report is not None and not _said_finished(finished_r):
        try:
            os.write(report, abrupt.encode())
        except OSError:
            pass
    _sweep(run_id, seen)


def _said_finished(finished_r: int) -> bool:
    """The byte is written before the run exits, so it is there now if it ever will be. Without it the pipe is
    at EOF (readable, empty) or, where a forked child still holds the write end, not readable at all."""
    if not select.select([finished_r], [], [], 0)[0]:
        return False
    try:
        return os.read(finished_r, 1) == b"1"
    except OSError:
        return False


def _detach_stdio(keep: set[int]) -> None:
    """A caller reading the run's stdout to EOF must not wait for the watchdog: hold none of the run's fds
    (`keep`: the watchdog's own, and stderr's duplicate only where it is not a pipe)."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def _set_name(name: bytes) -> None:
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name, 0, 0, 0)  # PR_SET_NAME: `ps` shows what it is
    except Exception:  # noqa: BLE001 - cosmetic
        pass


def _table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, start time, state) of every process; one that exits meanwhile is skipped."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()  # comm may hold spaces and parentheses
        table[int(name)] = (int(fields[1]), int(fields[19]), fields[0].decode())
    return table


def _descendants(table: dict, roots: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _marked(pid: int, run_id: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{MARKER}={run_id}".encode() in f.read().split(b"\0")
    except OSError:  # gone, or not ours
        return False


def _is_tracker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"resource_tracker" in f.read()
    except OSError:
        return False


def _run_processes(run_id: str, seen: dict[int, int]) -> set[int]:
    """Live (not zombie) processes of the run: marked ones, the noted ones still alive, and descendants."""
    table = _table()
    me = os.getpid()
    roots = {pid for pid in table if pid != me and _marked(pid, run_id)}
    roots |= {pid for pid, started in seen.items() if pid in table and table[pid][1] == started}
    found = (roots | _descendants(table, roots)) - {me}
    return {pid for pid in found if table[pid][2] not in ("Z", "X")}


def _sweep(run_id: str, seen: dict[int, int]) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < GIVE_UP_S:
        left = _run_processes(run_id, seen)
        if not left:
            return
        others = {pid for pid in left if not _is_tracker(pid)}
        victims = others or (left if time.monotonic() - t0 >= TRACKER_GRACE_S else set())
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:  # gone already
                pass
        time.sleep(0.1)
