"""Each evaluation's own host uid, leased from a reserved range (issue 23 item 4).

With one shared sandbox uid (65534) a program of one evaluation could signal another evaluation's program,
read its /proc/<pid>/fd and environ and forge its result, whenever the two were not in separate pid
namespaces (a host without bwrap), and RLIMIT_NPROC counted every evaluation of the host together. So when we
are root every evaluation runs as a uid of its own from UID_BASE .. UID_BASE + UID_COUNT - 1 (no account,
no files outside the run; far above the ranges distributions and /etc/subuid hand out):

  * a lease is an exclusive flock on <lock dir>/<uid>, held for the whole evaluation, so concurrent
    evaluations of every process on this host (Ray workers, runs side by side) never share a uid; the kernel
    drops the lock when its holder dies, however it dies;
  * a uid is handed out clean: its lock file says "clean" only after a release that saw none of its
    processes left; otherwise (the holder died mid-run) every process of that uid is killed first;
  * `release(sweep=True)` kills every process of the uid: a whole-tree kill by construction, for profiles
    without a cgroup kill or a pid namespace.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time

UID_BASE = 1_990_000_000
UID_COUNT = 4096
_CLEAN, _IN_USE = b"clean", b"inuse"  # the lease file's content; the same length


class UidLease:
    """One uid of the range, held until release(); see lease()."""

    def __init__(self, uid: int, fd: int):
        self.uid, self._fd = uid, fd

    def release(self, sweep: bool) -> None:
        """Give the uid back; with `sweep`, kill whatever still runs as it first."""
        if self._fd < 0:
            return
        try:
            if sweep:
                kill_uid(self.uid)
            if not sweep or not processes_of(self.uid):
                os.pwrite(self._fd, _CLEAN, 0)
        finally:
            os.close(self._fd)  # drops the flock
            self._fd = -1


def lease(lock_dir: str) -> UidLease:
    """A uid no other evaluation on this host holds, with no process of a previous holder left running."""
    for uid in range(UID_BASE, UID_BASE + UID_COUNT):  # the lowest free one: a few lease files, reused
        fd = os.open(os.path.join(lock_dir, str(uid)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if os.pread(fd, len(_CLEAN), 0) != _CLEAN:  # new, or its last holder died without releasing it
            kill_uid(uid)
        os.pwrite(fd, _IN_USE, 0)  # not clean until released so (an overwrite: cheaper than a truncate)
        return UidLease(uid, fd)
    raise RuntimeError(f"all {UID_COUNT} sandbox uids ({UID_BASE}+) are leased: too many concurrent evaluations "
                       "on this host")


def processes_of(uid: int) -> list[int]:
    """Live (not zombie) pids whose real, effective or saved uid is `uid` (a process cannot move all three to
    another uid without privileges it does not have)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"State:") and line.split()[1] in (b"Z", b"X"):
                        break
                    if line.startswith(b"Uid:"):
                        if uid in {int(x) for x in line.split()[1:4]}:
                            found.append(int(name))
                        break
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
    return found


def kill_uid(uid: int, budget_s: float = 10.0) -> None:
    """SIGKILL every process of `uid` until none is left (new ones forked meanwhile are caught next round)."""
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        pids = processes_of(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)
