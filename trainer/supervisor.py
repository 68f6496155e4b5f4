"""Every process a run starts dies with the run, also when the run is killed with SIGKILL (no handler runs).

Without this, `kill -9` of `ttt train` left vLLM's EngineCore, multiprocessing's resource_tracker and Ray's
raylet, gcs_server and dashboard / runtime-env agents running. PR_SET_PDEATHSIG reaches only direct children
(and fires when the spawning *thread* ends), and Ray and vLLM spawn their own grandchildren, some detached
(setsid, a double fork), with their environment cleared or their title set. So `start()`, called before
anything else is spawned, makes every later descendant of the run findable by construction, by something each
process inherits on fork and exec and keeps when it detaches:

  1. a cgroup of the run's own, where one is writable (root, or a delegated subtree): the run moves into a new
     leaf below its cgroup in the unified hierarchy (only where that takes no controller from the sandbox's
     cgroups below it) or else in v1's freezer; every process it forks is born in it;
  2. a marker in its hard RLIMIT_RTTIME (a limit only real-time-scheduled processes can reach; readable by
     anyone in /proc/PID/limits; no unprivileged process can raise it back): the same where no cgroup is;
  3. TTT_RUN_ID=<run pid>-<random> in os.environ, inherited by children exec'd after this (Ray's daemons and
     workers, resource_tracker, wandb), readable in /proc/PID/environ and shown by `ps e`.

A watchdog, forked first (its own session, outside the run's cgroup, so a terminal's SIGINT / SIGHUP does not
reach it), makes the cgroup and moves the run into it, then waits for the run to end, however it ends (a
pidfd of the run, or its parent pid changing where pidfds are unavailable; a pipe would not do: forked
children such as vLLM's keep its write end open). Then it SIGKILLs every process in the run's cgroup, every
process with its rlimit or environment marker, and their descendants, until none is left, and removes the
cgroup. A process forked and detached a moment before a kill -9 is caught like any other (the watchdog
polled the process table once a second before, and missed those). A subreaper would not do: orphans go to
the nearest subreaper *ancestor*, and no ancestor of the run outlives a kill -9 of it but the shell.
resource_tracker is killed last, after a grace period: once its clients are gone it unlinks the shared
memory and semaphores they leaked, then exits by itself. After a normal exit or SIGTERM the run has already
stopped its children; the sweep then only catches leftovers. Works as root and unprivileged (own processes).
`TTT_WATCHDOG_TRACKING=cgroup|rlimit` keeps one of the two mechanisms only (tests of each).

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
import resource
import secrets
import select
import signal
import stat
import time

MARKER = "TTT_RUN_ID"
CGROUP_PREFIX = "ttt_run-"  # the run's cgroup: <its own cgroup>/ttt_run-<run id>
RTTIME_BASE = 1 << 40  # the rlimit marker is this + 32 random bits (microseconds of real-time CPU: 12.7 days)
READY_S = 10.0  # the longest the run waits for the watchdog to move it into its cgroup
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
    token = secrets.token_hex(4)
    run_id = f"{run_pid}-{token}"  # a new id also inside an enclosing run: a run of its own
    tracking = os.environ.get("TTT_WATCHDOG_TRACKING", "cgroup,rlimit").split(",")
    rttime = _mark_rttime(RTTIME_BASE + int(token, 16)) if "rlimit" in tracking else None
    try:
        pidfd = os.pidfd_open(run_pid)  # opened here, before the fork: no window where the run is already gone
    except (AttributeError, OSError):  # old kernel, seccomp: fall back to watching the parent pid
        pidfd = None
    finished_r, finished_w = os.pipe()
    ready_r, ready_w = os.pipe()
    report = _report_fd()
    if os.fork() == 0:  # the watchdog; it never returns
        try:
            os.close(finished_w)
            os.close(ready_r)
            _watch(run_pid, run_id, rttime, "cgroup" in tracking, pidfd, finished_r, ready_w, report,
                   ABRUPT.format(pid=run_pid, hint=hint))
        finally:
            os._exit(0)
    for fd in (pidfd, finished_r, report, ready_w):
        if fd is not None:
            os.close(fd)
    select.select([ready_r], [], [], READY_S)  # in its cgroup (or none could be made) before it spawns anything
    os.close(ready_r)
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


def _mark_rttime(value: int) -> int | None:
    """Set the rlimit marker (soft and hard); None where this process may not (a lower hard limit, unprivileged)."""
    try:
        resource.setrlimit(resource.RLIMIT_RTTIME, (value, value))
        return value
    except (ValueError, OSError):
        return None


def _watch(run_pid: int, run_id: str, rttime: int | None, use_cgroup: bool, pidfd: int | None, finished_r: int,
           ready_w: int, report: int | None, abrupt: str) -> None:
    os.setsid()
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)  # it must outlive the run; it ends by itself once the run has ended
    cgroup = _run_cgroup(run_pid, run_id) if use_cgroup else None
    os.write(ready_w, b"1")
    _detach_stdio(keep={fd for fd in (pidfd, finished_r, report) if fd is not None})
    _set_name(b"ttt-watchdog")
    if pidfd is not None:
        select.select([pidfd], [], [])  # until the run has ended
    else:
        while os.getppid() == run_pid:
            time.sleep(0.5)
    if report is not None and not _said_finished(finished_r):
        try:
            os.write(report, abrupt.encode())
        except OSError:
            pass
    _sweep(run_id, rttime, cgroup)


def _run_cgroup(run_pid: int, run_id: str):
    """A new cgroup holding the run (RunCgroups of envs/sandbox/cgroups.py), or None where none can be made."""
    try:  # imported here, in the watchdog: the run itself stays free of numpy's threads until after the fork
        from envs.sandbox.cgroups import CgroupSupport, RunCgroups, own_dirs
    except Exception:  # noqa: BLE001 -- no cgroup then; the rlimit marker still finds every process
        return None
    dirs = own_dirs()
    for hierarchy in ("unified", "freezer"):
        own = dirs.get(hierarchy)
        if own is None or (hierarchy == "unified" and _controllers_below(own)):
            continue  # v2 with controllers enabled below us: a leaf for the run would take them from the sandbox
        _remove_dead_runs(own)
        leaf = os.path.join(own, CGROUP_PREFIX + run_id)
        try:
            os.mkdir(leaf)
            with open(os.path.join(leaf, "cgroup.procs"), "w") as f:
                f.write(str(run_pid))
        except OSError:
            try:
                os.rmdir(leaf)
            except OSError:
                pass
            continue
        return RunCgroups(CgroupSupport(parents={hierarchy: own}), {hierarchy: leaf})
    return None


def _remove_dead_runs(own: str) -> None:
    """Empty cgroups of runs whose watchdog could not remove them (it was killed too)."""
    try:
        names = [n for n in os.listdir(own) if n.startswith(CGROUP_PREFIX)]
    except OSError:
        return
    for name in names:
        if not os.path.exists(f"/proc/{name[len(CGROUP_PREFIX):].split('-')[0]}"):
            try:
                os.rmdir(os.path.join(own, name))
            except OSError:  # not empty (or gone): left alone
                pass


def _controllers_below(own: str) -> bool:
    try:
        with open(os.path.join(own, "cgroup.subtree_control")) as f:
            return bool(f.read().split())
    except OSError:
        return False


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


def _table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) of every process; one that exits meanwhile is skipped."""
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
        table[int(name)] = (int(fields[1]), fields[0].decode())
    return table


def _descendants(table: dict, roots: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _marked(pid: int, run_id: str, rttime: int | None) -> bool:
    """The process carries the run's rlimit marker or its environment marker."""
    try:
        if rttime is not None:
            with open(f"/proc/{pid}/limits") as f:  # readable by anyone
                line = next((x for x in f if x.startswith("Max realtime timeout")), "")
            if line.split()[-2:-1] == [str(rttime)]:  # soft, hard, units: the hard limit
                return True
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


def _run_processes(run_id: str, rttime: int | None, cgroup) -> set[int]:
    """Live (not zombie) processes of the run: those in its cgroup, the marked ones, and their descendants."""
    table = _table()
    me = os.getpid()  # the watchdog carries the rlimit marker too
    roots = {pid for pid in table if pid != me and _marked(pid, run_id, rttime)}
    if cgroup is not None:
        roots |= cgroup.pids() & table.keys()
    found = (roots | _descendants(table, roots)) - {me}
    return {pid for pid in found if table[pid][1] not in ("Z", "X")}


def _sweep(run_id: str, rttime: int | None, cgroup) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < GIVE_UP_S:
        left = _run_processes(run_id, rttime, cgroup)
        if not left:
            break
        others = {pid for pid in left if not _is_tracker(pid)}
        victims = others or (left if time.monotonic() - t0 >= TRACKER_GRACE_S else set())
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:  # gone already
                pass
        time.sleep(0.1)
    if cgroup is not None:
        cgroup.destroy()  # kills whatever is left in it, then removes it
