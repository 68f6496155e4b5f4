"""Whatever a program leaves behind is deleted without raising, without following links, and never poisons
later runs; run dirs of dead owners (a crashed parent) are reaped (issue 14 item 1)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from envs.sandbox import Limits, SandboxJob, run_sandboxed
from envs.sandbox.cleanup import reap_dead_runs, remove_tree
from envs.sandbox.detect import detect_profile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEEP = 1500  # shutil.rmtree recursed once per level: RecursionError from ~1000


def deep_chain(root: str, depth: int, locked_every: int = 0) -> None:
    """mkdir a/a/a/... `depth` levels below root (relative steps: the path outgrows PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    opened = []
    for i in range(depth):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        opened.append((fd, i))
        fd = child
    with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "w") as f:
        f.write("x")
    os.close(fd)
    for parent_fd, i in reversed(opened):  # lock some levels only after everything below exists
        if locked_every and i % locked_every == 0:
            os.chmod("d", 0o000, dir_fd=parent_fd)
        os.close(parent_fd)


def hostile_tree(root, outside) -> None:
    os.makedirs(root)
    deep_chain(str(root), DEEP, locked_every=500)
    (root / "locked").mkdir()
    (root / "locked" / "secret").write_text("x")
    (root / "locked" / "nested").mkdir()
    os.chmod(root / "locked" / "nested", 0)
    os.chmod(root / "locked", 0)
    (root / "nofile").write_text("x")
    os.chmod(root / "nofile", 0)
    os.symlink(outside, root / "link_to_outside_dir")
    os.symlink(outside / "keep.txt", root / "link_to_outside_file")
    os.symlink("/", root / "link_to_root")
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    sock.close()
    for name in (b"new\nline", b"\xff\xfe not utf-8", b"-rf", b".. ", b" ", b"*"):
        with open(os.path.join(os.fsencode(root), name), "wb") as f:
            f.write(b"x")
    wide = root / "wide"
    wide.mkdir()
    for i in range(5000):  # more than one listing batch
        (wide / str(i)).touch()


def test_remove_tree_deletes_hostile_leftovers_without_following_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    root = tmp_path / "run"
    hostile_tree(root, outside)
    t0 = time.monotonic()
    assert remove_tree(str(root)) is True
    assert not os.path.lexists(root)
    assert (outside / "keep.txt").read_text() == "keep"  # links were unlinked, never followed
    assert time.monotonic() - t0 < 30


def test_remove_tree_never_raises(tmp_path):
    assert remove_tree(str(tmp_path / "missing")) is True
    (tmp_path / "file").write_text("x")
    assert remove_tree(str(tmp_path / "file")) is True
    os.symlink(tmp_path, tmp_path / "link")
    assert remove_tree(str(tmp_path / "link")) is True and tmp_path.exists()  # the link, not its target
    root = tmp_path / "budget"
    root.mkdir()
    deep_chain(str(root), 200)
    assert remove_tree(str(root), budget_s=0.0) is False  # out of time: reports, does not raise
    assert remove_tree(str(root)) is True


def test_reaper_removes_only_dead_owners_runs(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    runs = tmp_path / "runs"
    runs.mkdir()
    stale, live = runs / f"{dead.pid}-abc", runs / f"{os.getpid()}-abc"
    for d in (stale, live):
        d.mkdir()
        deep_chain(str(d), DEEP, locked_every=700)
    (runs / "not-a-run").mkdir()
    assert reap_dead_runs(str(runs)) == 1
    assert not stale.exists() and live.exists() and (runs / "not-a-run").exists()
    assert remove_tree(str(live))


def runs_of(profile, pid: int) -> list[str]:
    return [n for n in os.listdir(profile.runs_dir) if n.startswith(f"{pid}-")]


LITTER = textwrap.dedent(f"""
    import os, socket
    def main():
        for top in {{dirs}}:
            try:
                fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue
            for i in range({DEEP}):
                os.mkdir("d", dir_fd=fd)
                nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                if i % 400 == 0:
                    os.chmod(nxt, 0o300)  # no listing
                os.close(fd)
                fd = nxt
            os.chmod(fd, 0)
            os.symlink("/etc", os.path.join(top, "etc_link"))
            os.mkfifo(os.path.join(top, "fifo"))
            try:
                os.chmod(top, 0o500)  # its own cwd can be locked; bwrap's /tmp belongs to root
            except OSError:
                pass
        return 1
""")


@pytest.mark.parametrize("disabled", [set(), {"bwrap"}], ids=["full", "no-bwrap"])
def test_litter_left_by_a_program_does_not_poison_later_runs(disabled):
    profile = detect_profile(disabled)
    dirs = ["/tmp", "/dev/shm", "."] if profile.bwrap else ["."]
    src = LITTER.replace("{dirs}", repr(dirs))
    for _ in range(2):
        out = run_sandboxed(SandboxJob(src, "main", result="json"), Limits(timeout_s=60), profile=profile)
        assert out.ok and out.value == 1, out.message + out.stderr_tail
        assert runs_of(profile, os.getpid()) == []
    ok = run_sandboxed(SandboxJob("def main():\n    return 2\n", "main", result="json"), profile=profile)
    assert ok.ok and ok.value == 2


def test_run_dirs_of_a_crashed_parent_are_reaped_by_the_next_profile():
    """The parent is SIGKILLed mid-run (what an OOM kill of a Ray worker does), its run dir holds a deep
    chain (the no-bwrap fallback writes to the host); the next process's profile detection deletes it."""
    src = textwrap.dedent(f"""
        import os, time
        def main():
            fd = os.open(".", os.O_RDONLY)
            for i in range({DEEP}):
                os.mkdir("d", dir_fd=fd)
                nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
                os.close(fd)
                fd = nxt
            os.chmod(fd, 0)
            print("LITTERED", flush=True)
            time.sleep(600)
    """)
    driver = ("from envs.sandbox import run_sandboxed, SandboxJob, Limits\n"
              "from envs.sandbox.detect import detect_profile\n"
              f"run_sandboxed(SandboxJob({src!r}, 'main', result='json'), Limits(timeout_s=120), "
              "profile=detect_profile({'bwrap'}))\n")
    profile = detect_profile({"bwrap"})
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        left = []
        while time.monotonic() < deadline:
            left = runs_of(profile, proc.pid)
            if left and any(_deep_enough(os.path.join(profile.runs_dir, d)) for d in left):
                break
            time.sleep(0.1)
        assert left, "the driver never started a run"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.5)  # pdeathsig: the program dies with its parent
        assert runs_of(profile, proc.pid)  # the crash left it behind ...
        detect_profile({"bwrap"})  # ... and the next process's detection reaps it
        assert runs_of(profile, proc.pid) == []
    finally:
        if proc.poll() is None:
            proc.kill()


def _deep_enough(run_dir: str) -> bool:
    try:
        with open(os.path.join(run_dir, "stdout"), "rb") as f:
            return b"LITTERED" in f.read()
    except OSError:
        return False
