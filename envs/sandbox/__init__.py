"""Run untrusted programs in a sandbox and bring back their outputs as validated data.

    outcome = run_sandboxed(SandboxJob(source, entry="run_packing"), Limits(timeout_s=60))

It runs only where this host keeps the isolation level in force (`strict` unless a caller chose a weaker one
by name: `with isolation.level("namespaces"): ...`); elsewhere it raises IsolationError, one line naming what
is missing and how to fix it (envs/sandbox/isolation.py).

Modules, parent side first:
    execute         Limits, SandboxJob, SandboxOutcome; run one job under a given profile and classify it
    isolation       the levels (strict, namespaces, minimal), what each guarantees, the fail-closed check
    profile         SandboxProfile: the protection layers in use (LAYERS), and turning one off
    detect          which layers this host offers, found by trial once per process (current_profile)
    command         the command line of a run: cgroup launcher, prlimit, setpriv, bwrap, environment
    cgroups         per-run cgroups: memory, pids and cpu limits, OOM detection, whole-tree kill
    identity        each evaluation's own uid (root), leased from a reserved range
    spawner         one long-lived thread that forks every sandbox (PR_SET_PDEATHSIG)
    cleanup         removing run dirs safely; reaping those of dead processes
    result_channel  the parent's reader of the program's outputs (pipes): bounded, pickle-free, finite data
    seccomp         the seccomp-bpf filter
    runner          the script that runs inside the sandbox (copied out and run as a file, stdlib only)
"""

from __future__ import annotations

from envs.sandbox import isolation
from envs.sandbox.detect import current_profile, detect_profile
from envs.sandbox.execute import Limits, SandboxJob, SandboxOutcome, library_paths, nproc_limit, run_with_profile
from envs.sandbox.isolation import IsolationError
from envs.sandbox.profile import LAYERS, SandboxProfile

__all__ = ["LAYERS", "IsolationError", "Limits", "SandboxJob", "SandboxOutcome", "SandboxProfile", "current_profile",
           "detect_profile", "isolation", "library_paths", "nproc_limit", "run_sandboxed", "run_with_profile"]


def run_sandboxed(job: SandboxJob, limits: Limits = Limits(), profile: SandboxProfile | None = None) -> SandboxOutcome:
    """Run `job` under `limits` with `profile`'s protections (default: this host's, detected on first use, if it
    keeps the isolation level in force; else IsolationError)."""
    return run_with_profile(job, limits, profile or isolation.require())
