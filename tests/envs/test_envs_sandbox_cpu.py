"""An evaluation gets the CPUs it asked for, not the machine (issue 14 item 5).

A program spins 4 busy processes for a fixed wall time with cpus=1, waits for them and reports their CPU time
from rusage (RUSAGE_CHILDREN). Allowed: 1 CPU-second per wall second, plus 20 % for accounting and period
edges. Without a bound the 4 spinners take every free core of the host. The outcome also reports how long
the quota held the run back (cpu.stat throttled time).
"""

from __future__ import annotations

import os
import textwrap

import pytest

from envs.sandbox import Limits, SandboxJob, run_sandboxed
from envs.sandbox.cgroups import CgroupSupport
from envs.sandbox.detect import detect_profile

SPIN = textwrap.dedent("""
    import os, resource, time
    def main(n, seconds):
        t0 = time.monotonic()
        kids = []
        for _ in range(n):
            pid = os.fork()
            if pid == 0:
                while time.monotonic() - t0 < seconds:
                    pass
                os._exit(0)
            kids.append(pid)
        for pid in kids:
            os.waitpid(pid, 0)
        wall = time.monotonic() - t0
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return [(ru.ru_utime + ru.ru_stime) / wall, wall, sorted(os.sched_getaffinity(0))]
""")


def cpu_per_wall_second(profile, cpus: int, spinners: int = 4, seconds: float = 3.0):
    job = SandboxJob(SPIN, "main", result="json", args=[spinners, seconds])
    out = run_sandboxed(job, Limits(timeout_s=60, cpus=cpus), profile=profile)
    assert out.ok, out.message + out.stderr_tail
    return [*out.value, out.cpu_throttled_s]


@pytest.mark.parametrize("fallback", [False, True], ids=["cgroup", "affinity"])
def test_four_busy_processes_with_cpus_1_get_one_cpu(fallback):
    profile = detect_profile(set())
    if fallback:  # a host without a writable cpu controller: pinned to one core instead
        profile = profile.without("cgroup_cpu", "test of the fallback")
    elif not profile.layers()["cgroup_cpu"]:
        pytest.skip("no writable cpu cgroup on this host")
    ratio, wall, cores, throttled = cpu_per_wall_second(profile, cpus=1)
    print(f"cpus=1, 4 spinners: {ratio:.3f} CPU-s per wall second over {wall:.1f} s, cores {cores}, "
          f"throttled {throttled:.2f} s")
    assert ratio <= 1.2
    if fallback:
        assert len(cores) == 1
    # On an idle host with >= 2 cores the unbounded spinners reach ~2.0 (or the core count); on a busy one the
    # host, not the quota, may be what holds them under 1.2: the quota itself is checked white-box below.


def test_a_quota_of_two_cpus_is_set_and_removed():
    support = CgroupSupport.detect()
    if not support.cpu:
        pytest.skip("no writable cpu cgroup on this host")
    run = support.create("cpu-test", 256 << 20, 16, cpus=2)
    try:
        assert run.cpu_limited
        if "cpu" in run.dirs:
            with open(os.path.join(run.dirs["cpu"], "cpu.cfs_quota_us")) as f:
                assert int(f.read()) == 200_000
        else:
            with open(os.path.join(run.dirs["unified"], "cpu.max")) as f:
                assert f.read().split() == ["200000", "100000"]
    finally:
        run.destroy()
    assert all(not os.path.exists(d) for d in run.dirs.values())


def test_missing_cpu_cgroup_is_explained_with_its_fallback():
    profile = detect_profile(set()).without("cgroup_cpu", "test")
    assert not profile.layers()["cgroup_cpu"] and "cgroup_cpu" in profile.off
