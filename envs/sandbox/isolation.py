"""Isolation levels: what a run that executes generated programs is promised, and the check that refuses to
run one on a host that cannot keep the promise (fail closed, issue 23 item 3).

    with isolation.level("strict"):           # the default; weaker levels only by name
        run_sandboxed(job, limits)            # IsolationError (one line: what is missing, how to fix it)

Levels, strongest first (each guarantee is a set of protection layers found on the host, envs/sandbox/detect.py):
  strict      every guarantee below: the program runs as its own uid (one per evaluation), in its own
              namespaces (no network, read-only system, private pid/ipc/mount), with bounded memory, processes,
              CPU and disk for its whole tree, and a seccomp filter. Needs root, bubblewrap >= 0.8, util-linux,
              libseccomp and writable memory/pids cgroups (scripts/install_sandbox_tools.sh; root CI hosts).
  namespaces  for hosts without root or cgroup delegation: no network, read-only system, private namespaces,
              bounded disk and CPU, seccomp; but the program may run as the trainer's uid inside a user namespace
              (it sees none of the trainer's files or processes), and memory and processes may be bounded per
              process only (RLIMIT_AS, the pid namespace).
  minimal     no isolation guarantee: a time limit, per-process rlimits, an empty environment, outputs through
              pipes that the parent validates. Without bwrap the program can use unix sockets, see every
              process and write world-writable host dirs; without root it runs as the trainer's own user and
              can read and write its files. Only for programs you trust.
Tasks that run no program (toy_digits) use no sandbox and no level.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
from typing import Callable

from envs.sandbox.profile import SandboxProfile

log = logging.getLogger("envs.sandbox")
LEVELS = ("strict", "namespaces", "minimal")
DEFAULT = "strict"

CGROUP_FIX = ("a writable {} cgroup: run as root on the host, or delegate one (systemd-run --user -p Delegate=yes, "
              "or a container with a private writable cgroup namespace)")
USERNS_FIX = ("allow unprivileged user namespaces (sysctl -w kernel.unprivileged_userns_clone=1; on Ubuntu also "
              "kernel.apparmor_restrict_unprivileged_userns=0) or run as root")


def _layer(name: str) -> Callable[[SandboxProfile], bool]:
    return lambda profile: profile.layers()[name]


def _fix(profile: SandboxProfile, layer: str, how: str) -> str:
    """`how` to turn `layer` on, unless it is off on purpose."""
    if "TTT_SANDBOX_DISABLE" in profile.off.get(layer, ""):
        return f"it is turned off by TTT_SANDBOX_DISABLE: remove {layer} from it"
    return how


def _bwrap_fix(p: SandboxProfile) -> str:
    reason = p.off.get("bwrap", "")
    if "not installed" in reason:
        return "install bubblewrap: bash scripts/install_sandbox_tools.sh"
    return _fix(p, "bwrap", f"bwrap fails here ({reason[:160]})" + ("" if os.geteuid() == 0 else ": " + USERNS_FIX))


# guarantee -> (what it promises, whether the profile keeps it, how to get it)
GUARANTEES: dict[str, tuple[str, Callable[[SandboxProfile], bool], Callable[[SandboxProfile], str]]] = {
    "own_uid": ("its own uid per evaluation", _layer("uid_drop"),
                lambda p: "run the trainer as root (each program then drops to a uid of its own)" if os.geteuid() != 0
                else _fix(p, "uid_drop", _fix(p, "pdeathsig", "install util-linux (setpriv): "
                                                               "bash scripts/install_sandbox_tools.sh"))),
    "namespaces": ("no network, a read-only system and private namespaces", _layer("bwrap"), _bwrap_fix),
    "disk": ("bounded disk (a size-limited private tmpfs, no writable host dir)", _layer("disk_quota"),
             lambda p: _fix(p, "disk_quota", "bubblewrap >= 0.8 (its --size): bash scripts/install_sandbox_tools.sh")
             if p.bwrap else "needs bwrap (above)"),
    "memory": ("bounded memory of the whole process tree", _layer("cgroup_memory"),
               lambda p: _fix(p, "cgroup_memory", CGROUP_FIX.format("memory"))),
    "pids": ("a bounded number of processes", lambda p: p.layers()["cgroup_pids"] or (p.drop_uid and bool(p.prlimit)),
             lambda p: _fix(p, "cgroup_pids", CGROUP_FIX.format("pids") + ", or root with util-linux (RLIMIT_NPROC "
                                                                        "of the program's own uid)")),
    "cpu": ("bounded CPU", lambda p: p.layers()["cgroup_cpu"] or bool(p.taskset),
            lambda p: _fix(p, "cgroup_cpu", "install util-linux (taskset), or " + CGROUP_FIX.format("cpu"))),
    "seccomp": ("a seccomp filter (no new namespaces, mounts, ptrace, non-unix sockets)", _layer("seccomp"),
                lambda p: _fix(p, "seccomp", f"libseccomp2 and the pyseccomp wheel ({p.off.get('seccomp', '')[:120]}): "
                                             "apt-get install libseccomp2; pip install pyseccomp "
                                             "(requirements/cpu.lock)")),
}
REQUIRED = {
    "strict": tuple(GUARANTEES),
    "namespaces": ("namespaces", "disk", "cpu", "seccomp"),
    "minimal": (),
}
DESCRIPTION = {
    "strict": "each program runs as its own uid, without network, on a read-only system, with bounded memory, "
              "processes, CPU and disk, under seccomp",
    "namespaces": "WEAKER than strict, chosen by name: no network, read-only system, bounded disk and CPU, seccomp; "
                  "but programs may run as the trainer's uid (inside a user namespace) and memory and processes "
                  "may be bounded per process only",
    "minimal": "NOT ISOLATED, chosen by name: programs get a time limit, rlimits and an empty environment only; "
               "they may see other processes, use unix sockets, fill world-writable host dirs and, without root, "
               "read and write the trainer's files",
}


class IsolationError(ValueError):
    """This host cannot keep the isolation level a run asked for: one line naming what is missing, how to fix it,
    and the strongest level the host does keep. `line(option)` names the levels as a command spells them."""

    def __init__(self, level: str, gaps: str, best: str):
        super().__init__(level, gaps, best)  # the args, so that it pickles (Ray sends it to the driver)
        self.level, self.gaps, self.best = level, gaps, best

    def __str__(self) -> str:
        return self.line("sandbox_isolation={}")

    def line(self, option: str) -> str:
        return (f"{option.format(self.level)} cannot be kept on this host, where generated programs would run. "
                f"Missing: {self.gaps}. Or accept a weaker level by name: {option.format(self.best)} "
                f"({DESCRIPTION[self.best]})")


_LEVEL: contextvars.ContextVar[str] = contextvars.ContextVar("sandbox_isolation", default=DEFAULT)


def check_name(level: str) -> str:
    if level not in LEVELS:
        raise ValueError(f"sandbox_isolation must be one of {', '.join(LEVELS)}; got {level!r}")
    return level


@contextlib.contextmanager
def level(name: str):
    """Sandboxed runs in this context (thread, task) require isolation `name`."""
    token = _LEVEL.set(check_name(name))
    try:
        yield
    finally:
        _LEVEL.reset(token)


def current_level() -> str:
    return _LEVEL.get()


def missing(profile: SandboxProfile, name: str) -> list[str]:
    """The guarantees of level `name` that `profile` does not keep."""
    return [g for g in REQUIRED[check_name(name)] if not GUARANTEES[g][1](profile)]


def strongest(profile: SandboxProfile) -> str:
    return next(name for name in LEVELS if not missing(profile, name))


def refusal(profile: SandboxProfile, name: str) -> IsolationError:
    """The error for a host that cannot keep level `name`: each missing guarantee with its fix, and the
    strongest level this host does keep, to accept by name instead."""
    gaps = "; ".join(f"{GUARANTEES[g][0]}: {GUARANTEES[g][2](profile)}" for g in missing(profile, name))
    return IsolationError(name, gaps, strongest(profile))


def require(name: str | None = None) -> SandboxProfile:
    """This host's profile if it keeps level `name` (default: the level of this context); IsolationError else."""
    return _required(check_name(name or _LEVEL.get()))


@functools.lru_cache(maxsize=None)
def _required(name: str) -> SandboxProfile:
    """Once per level and process; what is off is logged once where the level is kept without it."""
    from envs.sandbox.detect import current_profile

    profile = current_profile()
    if missing(profile, name):
        raise refusal(profile, name)
    on = ", ".join(layer for layer, have in profile.layers().items() if have) or "none"
    if profile.off:
        log.warning("sandbox_isolation=%s; protections OFF: %s; on: %s", name,
                    "; ".join(f"{k} ({v})" for k, v in sorted(profile.off.items())), on)
    else:
        log.info("sandbox_isolation=%s: all protections on (%s)", name, on)
    return profile


def describe(name: str) -> str:
    """The line a run prints at start."""
    return f"sandbox_isolation={name}: {DESCRIPTION[check_name(name)]}"
