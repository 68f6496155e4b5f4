"""Everything a program writes lands in a bounded private area (issue 14 item 2): filling it is the
program's failure ("disk quota exceeded"), nothing reaches the host disk, inodes are bounded too."""

from __future__ import annotations

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
