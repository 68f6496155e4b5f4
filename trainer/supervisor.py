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
"""

from __future__ import annotations

import os
import secrets
import select
import signal
import time

MARKER = "TTT_RUN_ID"
TRACKER_GRACE_S = 3.0  # resource_tracker's own cleanup after its clients die
GIVE_UP_S = 20.0  # processes that survive this many seconds of SIGKILLs (uninterruptible sleep) are left


def start() -> str:
    """Start the watchdog and mark this process's future children; returns the run id. Call once, early:
    before any child exists, and before threads (it forks)."""
    run_pid = os.getpid()
    run_id = f"{run_pid}-{secrets.token_hex(4)}"  # a new id also inside an enclosing run: a run of its own
    try:
        pidfd = os.pidfd_open(run_pid)  # opened here, before the fork: no window where the run is already gone
    except (AttributeError, OSError):  # old kernel, seccomp: fall back to watching the parent pid
        pidfd = None
    if os.fork() == 0:  # the watchdog; it never returns
        try:
            _watch(run_pid, run_id, pidfd)
        finally:
            os._exit(0)
    if pidfd is not None:
        os.close(pidfd)
    os.environ[MARKER] = run_id
    return run_id


def _watch(run_pid: int, run_id: str, pidfd: int | None) -> None:
    os.setsid()
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)  # it must outlive the run; it ends by itself once the run has ended
    _detach_stdio(keep=pidfd)
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
    _sweep(run_id, seen)


def _detach_stdio(keep: int | None) -> None:
    """A caller reading the run's stdout to EOF must not wait for the watchdog: hold none of the run's fds."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    low = 3
    if keep is not None:
        os.closerange(low, keep)
        low = keep + 1
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
