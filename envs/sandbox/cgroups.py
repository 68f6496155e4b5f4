"""Per-run cgroups: memory, pids and CPU-quota limits, OOM detection and a whole-tree kill.

Works on cgroup v1, v2 and hybrid hosts. Every run gets leaves named `ttt_sandbox-<owner pid>-<run id>`
inside this process's own cgroup of each hierarchy (delegation-friendly). The launcher shell
joins them before exec'ing the sandbox (never preexec_fn: not thread-safe in Ray workers). No persistent
parent dir is left in our cgroup, so whoever owns that cgroup can still remove it. Tree kill:
v2 `cgroup.kill` (ignores setsid and namespaces), then v1 freezer freeze -> SIGKILL all -> thaw, then SIGKILL
of every pid still listed in any of the run's cgroups. Leaves of dead owners are reaped when support is first detected.
CPU: a quota of `cpus` CPUs per 100 ms period (v1 cpu.cfs_quota_us, v2 cpu.max), so a program with 4 busy
threads and cpus=1 gets one CPU's worth of time, not the machine.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field, replace

LEAF_PREFIX = "ttt_sandbox-"  # leaves sit directly in our own cgroup: nothing persists after a run
CPU_PERIOD_US = 100_000


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _write(path: str, value: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(value)
        return True
    except OSError:
        return False


def own_dirs() -> dict[str, str]:
    """Map 'memory' / 'pids' / 'freezer' / 'cpu' (v1) and 'unified' (v2) to this process's cgroup dir."""
    mounts: dict[str, tuple[str, str]] = {}
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        root, mount_point, fstype, options = fields[3], fields[4], rfields[0], rfields[2].split(",")
        if fstype == "cgroup2":
            mounts.setdefault("unified", (root, mount_point))
        elif fstype == "cgroup":
            for ctrl in ("memory", "pids", "freezer", "cpu"):
                if ctrl in options:
                    mounts.setdefault(ctrl, (root, mount_point))
    dirs = {}
    for line in _read("/proc/self/cgroup").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        names = ["unified"] if parts[0] == "0" and parts[1] == "" else parts[1].split(",")
        for name in names:
            if name in mounts:
                root, mount_point = mounts[name]
                rel = os.path.relpath(parts[2], root) if parts[2].startswith(root) else parts[2].lstrip("/")
                dirs[name] = os.path.normpath(os.path.join(mount_point, rel))
    return dirs


def _subtree(leaf: str) -> list[str]:
    """`leaf` and the cgroups below it, parents first (a run's own cgroups may hold others', e.g. a sandbox's)."""
    return [path for path, _, _ in os.walk(leaf)]


@dataclass
class CgroupSupport:
    """Where per-run cgroups can be made on this host, and what they can do."""

    parents: dict[str, str] = field(default_factory=dict)  # hierarchy -> our own cgroup dir (writable)
    v2_controllers: frozenset = frozenset()
    kill_enabled: bool = True

    @property
    def memory(self) -> bool:
        return "memory" in self.parents or "memory" in self.v2_controllers

    @property
    def pids(self) -> bool:
        return "pids" in self.parents or "pids" in self.v2_controllers

    @property
    def cpu(self) -> bool:
        return "cpu" in self.parents or "cpu" in self.v2_controllers

    @property
    def tree_kill(self) -> bool:
        """Every process of a run can be found (cgroup.procs) and killed, wherever it moved."""
        return self.kill_enabled and bool(self.parents)

    @property
    def any(self) -> bool:
        return self.memory or self.pids or self.cpu or self.tree_kill

    def without(self, feature: str) -> "CgroupSupport":
        """A copy that no longer uses one feature: 'memory', 'pids', 'cpu' or 'kill'."""
        if feature == "kill":
            return replace(self, kill_enabled=False)
        return replace(self, parents={k: v for k, v in self.parents.items() if k != feature},
                       v2_controllers=self.v2_controllers - {feature})

    @classmethod
    def detect(cls) -> "CgroupSupport":
        parents = {}
        controllers: frozenset = frozenset()
        for name, own in own_dirs().items():
            probe = os.path.join(own, f"{LEAF_PREFIX}{os.getpid()}-probe")
            try:
                os.mkdir(probe)
            except FileExistsError:
                pass
            except OSError:
                continue
            usable = {"unified": lambda: os.path.exists(os.path.join(probe, "cgroup.kill")),  # kernel >= 5.14
                      "memory": lambda: _write(os.path.join(probe, "memory.limit_in_bytes"), str(1 << 30)),
                      "pids": lambda: _write(os.path.join(probe, "pids.max"), "64"),
                      "freezer": lambda: _write(os.path.join(probe, "freezer.state"), "THAWED"),
                      "cpu": lambda: _write(os.path.join(probe, "cpu.cfs_quota_us"), str(CPU_PERIOD_US))}[name]()
            try:
                os.rmdir(probe)
            except OSError:
                pass
            if not usable:
                continue
            if name == "unified":
                controllers = frozenset(_read(os.path.join(own, "cgroup.subtree_control")).split())
            parents[name] = own
        support = cls(parents=parents, v2_controllers=controllers)
        support.reap_dead_owners()
        return support

    def reap_dead_owners(self) -> None:
        """Remove leaves left behind by owners that died (e.g. an OOM-killed Ray worker)."""
        for hierarchy, parent in self.parents.items():
            try:
                names = [n for n in os.listdir(parent) if n.startswith(LEAF_PREFIX)]
            except OSError:
                continue
            for name in names:
                owner = name[len(LEAF_PREFIX):].split("-", 1)[0]
                leaf = os.path.join(parent, name)
                if owner.isdigit() and os.path.isdir(leaf) and not os.path.exists(f"/proc/{owner}"):
                    RunCgroups(self, {hierarchy: leaf}).destroy()

    def create(self, run_name: str, memory_bytes: int, max_pids: int, cpus: float = 1) -> "RunCgroups | None":
        dirs = {}
        for hierarchy, parent in self.parents.items():
            path = os.path.join(parent, f"{LEAF_PREFIX}{os.getpid()}-{run_name}")
            try:
                os.mkdir(path)
            except OSError:
                continue
            dirs[hierarchy] = path
        if not dirs:
            return None
        run = RunCgroups(self, dirs)
        run.set_limits(memory_bytes, max_pids, cpus)
        return run


@dataclass
class RunCgroups:
    support: CgroupSupport
    dirs: dict[str, str]  # hierarchy -> this run's leaf
    cpu_limited: bool = False  # a CPU quota is in force (else the caller pins CPUs instead)

    def set_limits(self, memory_bytes: int, max_pids: int, cpus: float = 1) -> None:
        quota = max(1000, int(cpus * CPU_PERIOD_US))
        self.cpu_limited = False
        if "cpu" in self.dirs:
            leaf = self.dirs["cpu"]
            self.cpu_limited = (_write(os.path.join(leaf, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
                                and _write(os.path.join(leaf, "cpu.cfs_quota_us"), str(quota)))
        if "memory" in self.dirs:
            leaf = self.dirs["memory"]
            _write(os.path.join(leaf, "memory.limit_in_bytes"), str(memory_bytes))
            _write(os.path.join(leaf, "memory.memsw.limit_in_bytes"), str(memory_bytes))  # no swap escape
        if "pids" in self.dirs:
            _write(os.path.join(self.dirs["pids"], "pids.max"), str(max_pids))
        if "unified" in self.dirs:
            leaf = self.dirs["unified"]
            if "memory" in self.support.v2_controllers and "memory" not in self.dirs:
                _write(os.path.join(leaf, "memory.max"), str(memory_bytes))
                _write(os.path.join(leaf, "memory.swap.max"), "0")
                _write(os.path.join(leaf, "memory.oom.group"), "1")
            if "pids" in self.support.v2_controllers and "pids" not in self.dirs:
                _write(os.path.join(leaf, "pids.max"), str(max_pids))
            if "cpu" in self.support.v2_controllers and "cpu" not in self.dirs:
                self.cpu_limited = _write(os.path.join(leaf, "cpu.max"), f"{quota} {CPU_PERIOD_US}")

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs.values()]

    def pids(self) -> set[int]:
        """Every process in the run's cgroups and in any cgroup below them."""
        found = set()
        for leaf in self.dirs.values():
            for path in _subtree(leaf):
                found.update(int(p) for p in _read(os.path.join(path, "cgroup.procs")).split() if p.isdigit())
        return found

    def kill(self) -> None:
        """SIGKILL every process of the run, wherever it moved (setsid, new namespaces)."""
        if not self.support.kill_enabled:
            return
        if "unified" in self.dirs:
            _write(os.path.join(self.dirs["unified"], "cgroup.kill"), "1")
        freezer = self.dirs.get("freezer")
        for _ in range(50):
            pids = self.pids()
            if not pids:
                return
            if freezer:  # frozen tasks cannot fork while we kill them
                _write(os.path.join(freezer, "freezer.state"), "FROZEN")
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if freezer:  # SIGKILL is delivered on thaw
                _write(os.path.join(freezer, "freezer.state"), "THAWED")
            time.sleep(0.002)

    def _counter(self, hierarchy: str, filename: str, key: str) -> int:
        leaf = self.dirs.get(hierarchy)
        if not leaf:
            return 0
        for line in _read(os.path.join(leaf, filename)).splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
                return int(parts[1])
        return 0

    def oom_kills(self) -> int:
        return (self._counter("memory", "memory.oom_control", "oom_kill")
                + self._counter("unified", "memory.events", "oom_kill"))

    def cpu_throttled_s(self) -> float:
        """Time the run's processes waited because the CPU quota was used up (cpu.stat)."""
        return (self._counter("cpu", "cpu.stat", "throttled_time") / 1e9
                + self._counter("unified", "cpu.stat", "throttled_usec") / 1e6)

    def pids_limit_hits(self) -> int:
        return self._counter("pids", "pids.events", "max") + self._counter("unified", "pids.events", "max")

    def destroy(self) -> None:
        """Kill what is left and remove the leaves, retrying while the kernel finishes the exits."""
        for _ in range(200 if self.support.kill_enabled else 3):
            self.kill()
            remaining = {}
            for hierarchy, leaf in self.dirs.items():
                try:
                    for path in reversed(_subtree(leaf)):  # cgroups made below it first (rmdir needs them gone)
                        os.rmdir(path)
                except FileNotFoundError:
                    pass
                except OSError:
                    remaining[hierarchy] = leaf
            self.dirs = remaining
            if not remaining:
                return
            time.sleep(0.005)
