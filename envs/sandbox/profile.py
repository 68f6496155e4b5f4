"""A sandbox profile: which protection layers are in use on this host, and the same profile with one turned off.

Which layers a host offers is found by trial (envs/sandbox/detect.py); running a job under a profile is
envs/sandbox/execute.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from envs.sandbox.cgroups import CgroupSupport

LAYERS = ("cgroup_memory", "cgroup_pids", "cgroup_kill", "cgroup_cpu", "prlimit", "pdeathsig", "uid_drop", "bwrap",
          "disk_quota", "seccomp")


@dataclass(frozen=True)
class SandboxProfile:
    """The layers in use; a None tool means that layer is off. `off` says why each missing layer is off."""

    cgroups: CgroupSupport | None = None
    prlimit: str | None = None
    setpriv: str | None = None
    drop_uid: bool = False
    bwrap: str | None = None
    bwrap_tmpfs_size: bool = False  # bwrap can size its tmpfs: the program's writable area is bounded
    taskset: str | None = None  # CPU affinity: the CPU bound where no cpu cgroup is writable
    seccomp_path: str | None = None
    runner_path: str = ""
    runs_dir: str = ""
    uids_dir: str = ""  # the lease files of the per-evaluation uids (drop_uid)
    off: dict = field(default_factory=dict)

    @property
    def as_root(self) -> bool:
        return os.geteuid() == 0

    def layers(self) -> dict[str, bool]:
        cg = self.cgroups
        return {"cgroup_memory": bool(cg and cg.memory), "cgroup_pids": bool(cg and cg.pids),
                "cgroup_kill": bool(cg and cg.tree_kill), "cgroup_cpu": bool(cg and cg.cpu),
                "prlimit": bool(self.prlimit), "pdeathsig": bool(self.setpriv), "uid_drop": self.drop_uid,
                "bwrap": bool(self.bwrap), "disk_quota": bool(self.bwrap and self.bwrap_tmpfs_size),
                "seccomp": bool(self.seccomp_path)}

    def without(self, layer: str, reason: str) -> "SandboxProfile":
        """This profile with one layer off (and the layers that depend on it), each with its reason."""
        off = {**self.off, layer: reason}
        if layer.startswith("cgroup_"):
            cgroups = self.cgroups.without(layer[len("cgroup_"):]) if self.cgroups else None
            return replace(self, off=off, cgroups=cgroups if cgroups and cgroups.any else None)
        if layer == "pdeathsig":  # the uid drop is done by setpriv too
            if self.drop_uid:
                off["uid_drop"] = f"needs setpriv, which is off ({reason})"
            return replace(self, off=off, setpriv=None, drop_uid=False)
        if layer == "bwrap" and self.bwrap_tmpfs_size:  # the quota is bwrap's sized tmpfs
            off["disk_quota"] = f"needs bwrap, which is off ({reason}): the program writes to host dirs"
        field_name, value = {"prlimit": ("prlimit", None), "uid_drop": ("drop_uid", False),
                             "bwrap": ("bwrap", None), "disk_quota": ("bwrap_tmpfs_size", False),
                             "seccomp": ("seccomp_path", None)}[layer]
        return replace(self, off=off, **{field_name: value})
