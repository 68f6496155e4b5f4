"""Delete whatever a sandboxed program left on the host, without ever raising or recursing.

A program controls the shape of what it leaves: a directory chain 100k deep (shutil.rmtree recursed once per
level and raised RecursionError, the run dir stayed and every later run failed), mode-000 dirs, symlinks to
our own files, FIFOs, sockets, names with newlines or invalid UTF-8. So the walk here is iterative and holds
one directory fd at a time (depth costs neither stack nor fds); it works relative to that fd with
O_NOFOLLOW (a symlink is unlinked, never followed); it never crosses into another filesystem (a mount is
left alone); it fixes permissions only on directories it opened itself; every error is counted, not raised,
and a time budget bounds the whole job. Whatever could not be deleted is left for the reaper, which deletes
run dirs whose owner pid is dead (also after a crash of the parent).
"""

from __future__ import annotations

import logging
import os
import stat
import time

log = logging.getLogger("envs.sandbox")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_BATCH = 4096  # entries listed per pass: a directory with millions of names never sits in memory at once


def _open_dir(parent_fd: int, name: str, dev: int) -> int | None:
    """An fd of the real directory `name` on device `dev`, made searchable if the program locked it."""
    for attempt in (0, 1):
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except PermissionError:
            if attempt or not _chmod_dir(parent_fd, name, dev):
                return None
            continue
        except OSError:
            return None
        st = os.fstat(fd)
        if st.st_dev != dev or not stat.S_ISDIR(st.st_mode):  # a mount point: not ours to empty
            os.close(fd)
            return None
        if st.st_mode & 0o700 != 0o700:  # readable for listing, writable for unlinking, searchable
            try:
                os.fchmod(fd, 0o700)
            except OSError:
                pass
        return fd
    return None


def _chmod_dir(parent_fd: int, name: str, dev: int) -> bool:
    """chmod 0700 the directory `name` through an O_PATH fd (no symlink is ever followed)."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent_fd)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_dev != dev:
            return False
        os.chmod(f"/proc/self/fd/{fd}", 0o700)  # fchmod refuses O_PATH fds; the magic link does not
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _unlink_entries(fd: int, stuck: set) -> str | None:
    """Unlink the non-directories of one batch; return the name of a subdirectory to descend into, if any."""
    batch = []
    with os.scandir(fd) as it:
        for entry in it:
            try:
                key = (entry.inode(), entry.name)
            except OSError:
                continue
            if key not in stuck:
                batch.append((entry, key))
                if len(batch) >= _BATCH:
                    break
    for entry, key in batch:
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            try:
                os.rmdir(entry.name, dir_fd=fd)  # empty: no need to descend
                continue
            except OSError:
                return entry.name
        try:
            os.unlink(entry.name, dir_fd=fd)
        except OSError:
            stuck.add(key)
    return None


def remove_tree(path: str, budget_s: float = 60.0) -> bool:
    """Delete `path` and everything under it; True if it is gone. Never raises, never follows a symlink."""
    try:
        return _remove_tree(path, budget_s)
    except Exception as e:  # noqa: BLE001 -- cleanup must never fail a run; the reaper retries later
        log.warning("could not remove %s: %s: %s", path, type(e).__name__, e)
        return False


def _remove_tree(path: str, budget_s: float) -> bool:
    parent, name = os.path.split(os.path.abspath(path))
    try:
        top_fd = os.open(parent, _DIR_FLAGS)
    except OSError:
        return not os.path.lexists(path)
    fds = [top_fd]  # whatever is open, closed on the way out
    try:
        try:
            st = os.stat(name, dir_fd=top_fd, follow_symlinks=False)
        except FileNotFoundError:
            return True
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=top_fd)
            return True
        fd = _open_dir(top_fd, name, st.st_dev)
        if fd is None:
            return False
        fds.append(fd)
        chain: list[tuple[str, int]] = []  # (dir name, inode of its parent) from `path` down to fd's dir
        stuck: set = set()  # (inode, name) of entries that could not be deleted: skipped, so the walk ends
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            child = _unlink_entries(fd, stuck)
            if child is not None:
                child_fd = _open_dir(fd, child, st.st_dev)
                if child_fd is None:
                    stuck.add((_ino(fd, child), child))
                    continue
                chain.append((child, os.fstat(fd).st_ino))
                fds[-1] = child_fd
                os.close(fd)
                fd = child_fd
                continue
            if not _listing_is_done(fd, stuck):
                continue
            if not chain:  # back at the top: everything below is gone (or stuck)
                try:
                    os.rmdir(name, dir_fd=top_fd)
                    return True
                except OSError:
                    return False
            up = os.open("..", _DIR_FLAGS, dir_fd=fd)
            fds[-1] = up
            os.close(fd)
            fd = up
            child, parent_ino = chain.pop()
            if os.fstat(fd).st_ino != parent_ino:  # the tree was moved under us: stop, leave it to the reaper
                return False
            try:
                os.rmdir(child, dir_fd=fd)
            except OSError:
                stuck.add((_ino(fd, child), child))
        log.warning("gave up removing %s after %.0f s; the reaper will retry", path, budget_s)
        return False
    finally:
        for f in fds:
            try:
                os.close(f)
            except OSError:
                pass


def _ino(dir_fd: int, name: str) -> int:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino
    except OSError:
        return -1


def _listing_is_done(fd: int, stuck: set) -> bool:
    """True when every entry left in the directory is one we already failed to delete."""
    with os.scandir(fd) as it:
        for entry in it:
            try:
                if (entry.inode(), entry.name) not in stuck:
                    return False
            except OSError:
                continue
    return True


def reap_dead_runs(runs_dir: str, budget_s: float = 60.0) -> int:
    """Delete run dirs (named `<owner pid>-...`) whose owner process is gone; the number removed. Never raises."""
    removed = 0
    try:
        names = os.listdir(runs_dir)
    except OSError:
        return 0
    deadline = time.monotonic() + budget_s
    for name in names:
        owner = name.split("-", 1)[0]
        if not owner.isdigit() or os.path.exists(f"/proc/{owner}"):
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            break
        removed += remove_tree(os.path.join(runs_dir, name), budget_s=left)
    return removed
