"""Everything a program writes lands in a bounded private area (issue 14 item 2): filling it is the
program's failure ("disk quota exceeded"), nothing reaches the host disk, inodes are bounded too."""

from __future__ import annotations

import os
import textwrap

import pytest

from sandbox_helpers import require
from envs.sandbox import Limits, SandboxJob, run_sandboxed
from envs.sandbox.command import writable_area

FILL = textwrap.dedent("""
    import os
    def main():
        written = 0
        chunk = b"x" * (1 << 20)
        try:
            for i in range(100000):  # 100 GB: far past any quota
                with open(os.path.join({where!r}, "fill%d" % i), "wb") as f:
                    for _ in range({per_file}):
                        f.write(chunk)
                        f.flush()
                        written += 1
        finally:
            print("wrote_mb", written, flush=True)
        return written
""")


def written_mb(out) -> int:
    return int(out.stdout_tail.split("wrote_mb")[1].split()[0])


@pytest.mark.parametrize("where,per_file", [("/tmp", 1000), (".", 1000), ("/job", 4), ("/dev/shm", 1000)])
def test_filling_the_writable_area_is_a_disk_quota_failure(layers, where, per_file):
    require(layers, "disk_quota")
    limits = Limits(timeout_s=60, memory_mb=256, disk_mb=64)
    out = run_sandboxed(SandboxJob(FILL.format(where=where, per_file=per_file), "main", result="json"), limits)
    assert out.status == "runtime_error" and "disk quota exceeded" in out.message, (out.status, out.message)
    assert "64 MB" in out.message
    tmp_bytes, shm_bytes = writable_area(64)
    cap = (shm_bytes if where == "/dev/shm" else tmp_bytes) >> 20
    assert 0 < written_mb(out) <= cap


def test_the_quota_is_shared_by_every_writable_place(layers):
    require(layers, "disk_quota")
    src = textwrap.dedent("""
        import os
        def main():
            total = 0
            for d in ("/tmp", "/job", ".", "/dev/shm", "/", "/dev", "/sandbox", "/usr", os.path.expanduser("~")):
                try:
                    with open(os.path.join(d, "fill"), "wb") as f:
                        for _ in range(1000):
                            f.write(b"x" * (1 << 20))
                            f.flush()
                            total += 1
                except OSError:
                    pass
            return total
    """)
    out = run_sandboxed(SandboxJob(src, "main", result="json"), Limits(timeout_s=60, memory_mb=256, disk_mb=64))
    assert out.ok, out.message
    assert out.value <= 64  # /tmp (with /job and the cwd in it) and /dev/shm together; / and /dev are read-only


def test_many_small_files_are_bounded(layers):
    """Empty files cost no blocks but inodes and dentries, which are memory charged to the run's cgroup."""
    require(layers, "disk_quota", "cgroup_memory")
    src = textwrap.dedent("""
        import os
        def main():
            for n in range(5_000_000):
                os.close(os.open("f%d" % n, os.O_CREAT | os.O_WRONLY, 0o600))
            return n
    """)
    out = run_sandboxed(SandboxJob(src, "main", result="json"), Limits(timeout_s=60, memory_mb=128, disk_mb=32))
    assert out.status in ("oom", "runtime_error"), (out.status, out.message)
    assert "memory limit" in out.message or "disk quota" in out.message


def test_no_host_filesystem_is_writable_inside(layers):
    """The program sees no writable host dir (results leave through two inherited fds): every writable
    mount is a sized tmpfs or a kernel pseudo filesystem, and bwrap's own / and /dev are read-only."""
    require(layers, "disk_quota")
    src = textwrap.dedent("""
        def main():
            rw = []
            for line in open("/proc/self/mountinfo"):
                fields, _, rest = line.partition(" - ")
                point, opts = fields.split()[4], fields.split()[5].split(",")
                fstype = rest.split()[0]
                if "rw" in opts:
                    rw.append([point, fstype])
            return rw
    """)
    out = run_sandboxed(SandboxJob(src, "main", result="json"), Limits(timeout_s=60))
    assert out.ok, out.message
    writable = {point: fstype for point, fstype in out.value}
    assert {"/tmp", "/dev/shm"} <= set(writable) and "/" not in writable and "/dev" not in writable
    devices = {p for p, t in writable.items() if t == "devtmpfs" and p.startswith("/dev/")}  # /dev/null & co.
    assert all(t in ("tmpfs", "proc", "devpts", "mqueue") for p, t in writable.items() if p not in devices), writable
    assert all(fstype != "tmpfs" or point in ("/tmp", "/dev/shm") for point, fstype in writable.items()), writable


def test_writable_area_split():
    tmp_bytes, shm_bytes = writable_area(512)
    assert tmp_bytes + shm_bytes == 512 << 20 and shm_bytes == 128 << 20
    assert Limits().disk_mb == 512


# Every fd the program holds, every call that could grow or reserve the file behind it (issue 23 item 2):
# fallocate in each mode (FALLOC_FL_KEEP_SIZE ignores RLIMIT_FSIZE: it reserved 1 GiB of host disk through
# the inherited stdout), posix_fallocate, ftruncate, a write at a 1 GiB offset, and a read-write reopen through
# /proc/self/fd. Nothing may succeed but on /dev/null.
GROW = textwrap.dedent("""
    import ctypes, errno, os, stat, time
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    GIB = 1 << 30
    MODES = {"plain": 0, "keep_size": 1, "punch_hole": 3, "zero_range": 16, "zero_range_keep": 17, "insert": 32}

    def attempts(fd):
        done = []
        for name, mode in MODES.items():
            if libc.fallocate(fd, mode, 0, GIB) == 0:
                done.append("fallocate_" + name)
        for name, call in (("posix_fallocate", lambda: os.posix_fallocate(fd, 0, GIB)),
                           ("ftruncate", lambda: os.ftruncate(fd, GIB)),
                           ("pwrite", lambda: os.pwrite(fd, b"x", GIB))):
            try:
                call()
                done.append(name)
            except OSError:
                pass
        try:
            again = os.open("/proc/self/fd/%d" % fd, os.O_RDWR)
            done.append("reopen_rw")
            done += ["reopened_" + d for d in attempts_once(again)]
            os.close(again)
        except OSError:
            pass
        return done

    def attempts_once(fd):
        return ["fallocate"] if libc.fallocate(fd, 1, 0, GIB) == 0 else []

    def main():
        # the control: a file of its own in its cwd (a tmpfs with bwrap), where fallocate works
        own = os.open("own", os.O_CREAT | os.O_RDWR, 0o600)
        control = libc.fallocate(own, 1, 0, 1 << 20) == 0
        report = []
        for name in sorted(os.listdir("/proc/self/fd"), key=int):
            fd = int(name)
            try:
                st = os.fstat(fd)
            except OSError:  # the fd listdir itself used
                continue
            if fd == own:
                continue
            kind = "fifo" if stat.S_ISFIFO(st.st_mode) else "reg" if stat.S_ISREG(st.st_mode) else \
                "chr" if stat.S_ISCHR(st.st_mode) else "other"
            report.append([fd, kind, attempts(fd), os.readlink("/proc/self/fd/%d" % fd)])
        time.sleep(1.5)  # hold whatever was reserved while the parent looks at its disks
        return [control, report]
""")


@pytest.mark.parametrize("bwrap", [True, False], ids=["full", "no-bwrap"])
def test_no_call_on_an_inherited_fd_takes_host_disk(layers, bwrap):
    import shutil
    import threading
    import time

    from envs.sandbox.detect import current_profile, detect_profile

    if bwrap:
        require(layers, "disk_quota")
    profile = current_profile() if bwrap else detect_profile({"bwrap"})
    disks = {profile.runs_dir, "/tmp", os.path.expanduser("~")}
    free = {d: shutil.disk_usage(d).free for d in disks}
    lowest = dict(free)
    done = threading.Event()
    outcome = {}

    def run():
        outcome["out"] = run_sandboxed(SandboxJob(GROW, "main", result="json"), Limits(timeout_s=30), profile=profile)
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    while not done.wait(0.05):
        for d in disks:
            lowest[d] = min(lowest[d], shutil.disk_usage(d).free)
    thread.join()
    out = outcome["out"]
    assert out.ok, out.message + out.stderr_tail
    control, fds = out.value
    report = {fd: (kind, grown, target) for fd, kind, grown, target in fds}
    fifos = [fd for fd, (kind, *_) in report.items() if kind == "fifo"]
    assert report[0][2] == "/dev/null" and {1, 2} <= set(fifos) and len(fifos) == 4, report  # + 2 channels
    assert control  # fallocate works where it may: the refusals below are the pipes', not a missing syscall
    for fd, (kind, grown, target) in report.items():  # writes to /dev/null vanish; nothing else may grow
        assert not grown or target == "/dev/null", (fd, kind, grown, target)
    drops = {d: (free[d] - lowest[d]) >> 20 for d in disks}
    print(f"fds {report}; largest drop of free host disk while it ran: {drops} MB")
    assert all(drop < 512 for drop in drops.values()), drops  # each attempt asked for 1 GiB


def test_output_past_its_cap_fails_the_program_not_the_host():
    """stdout is read up to file_size_mb; past it the program's writes fail (EPIPE), as EFBIG did for a file."""
    src = "import sys\ndef main():\n    for _ in range(20):\n        sys.stdout.write('z' * (1 << 20))\n    return 1\n"
    out = run_sandboxed(SandboxJob(src, "main", result="json"), Limits(timeout_s=30, file_size_mb=2))
    assert out.status == "runtime_error" and "BrokenPipeError" in out.message, out.message
    assert out.stdout_tail == "z" * Limits().tail_chars


def test_a_program_writing_byte_by_byte_does_not_keep_the_parent_busy(monkeypatch):
    """The parent reads the pipes while the program runs; one that writes a byte at a time would wake it for
    every byte. After a run of small reads the parent reads at most every 5 ms (the pipe buffers meanwhile)."""
    import time

    from envs.sandbox.result_channel import OutputPipes

    reads = []
    real_read = OutputPipes.read
    monkeypatch.setattr(OutputPipes, "read", lambda self, fd: reads.append(fd) or real_read(self, fd))
    src = ("import os, time\ndef main():\n    t0, n = time.monotonic(), 0\n    while time.monotonic() - t0 < 2:\n"
           "        os.write(2, b'x')\n        n += 1\n    return n\n")
    t0 = time.perf_counter()
    out = run_sandboxed(SandboxJob(src, "main", result="json"), Limits(timeout_s=20))
    wall = time.perf_counter() - t0
    assert out.ok and out.value > 10_000 and out.stderr_tail == "x" * Limits().tail_chars, out.message
    print(f"{out.value} one-byte writes, {len(reads)} reads by the parent in {wall:.1f} s")
    assert len(reads) <= 200 * wall + 50  # one per 5 ms (the first 16 small reads come at once)
