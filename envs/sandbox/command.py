"""The command line that starts one sandboxed run (SANDBOX.md §4), from the outermost layer inwards:

  sh (joins the run's cgroups, then exec)            -- only when cgroups are available
  prlimit --as --cpu --fsize --core --nofile [--nproc]
  setpriv --pdeathsig KILL [uid drop when no bwrap]
  [taskset --cpu-list]                               -- only when there is no cpu cgroup (affinity fallback)
  bwrap: new ipc/pid/net/uts/cgroup namespaces (+user when not root), read-only system and interpreter,
         one size-limited private tmpfs /tmp holding the cwd /job (our inputs bound read-only into it),
         a small size-limited /dev/shm, everything else read-only; no host-writable dir at all (results
         go through two inherited pipes, as do stdout and stderr); empty environment, die-with-parent, new session
  setpriv --reuid/--regid UID, no groups, no capabilities, pdeathsig   -- inside bwrap, when root; UID is the
                                                   evaluation's own (envs/sandbox/identity.py)
  seccomp filter: bwrap --seccomp FD, or loaded by the runner itself when there is no bwrap
  python -I -S runner.py                              -- execs the program, writes its outputs as data

bwrap runs before the uid drop when we are root: a process already at an unprivileged uid could not reach an
interpreter under a 0700 directory such as /root/.pyenv, while bwrap (as root, with only SETUID/SETGID/SETPCAP
kept) can bind it in, and the program still ends up as its own host uid with no capabilities (SANDBOX.md G2).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "RAYON_NUM_THREADS", "NUMBA_NUM_THREADS")
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime",
             "/etc/nsswitch.conf")
ACCOUNT_FILES = ("passwd", "group")  # written per run (account_files), bound at /etc/passwd and /etc/group
JOB_FILES = ("program.py", "call.json", "inputs.npz")
JOB_IN_TMP = "/tmp/.job"  # the program's cwd; /job is a symlink to it


@dataclass(frozen=True)
class RunPaths:
    run_dir: str  # host dir of the run (the job dir in it)
    job_dir: str  # host dir with our inputs (program.py, call.json, inputs.npz)
    runner: str  # host path of the runner script
    seccomp: str | None  # host path of the compiled BPF filter


def writable_area(disk_mb: int) -> tuple[int, int]:
    """Bytes of the two private tmpfs: /tmp (with /job in it) and /dev/shm, together `disk_mb`."""
    total = max(2, int(disk_mb)) << 20
    shm = max(1 << 20, total // 4)  # semaphores and joblib memmaps; the rest is for files
    return total - shm, shm


def sandbox_env(cpus: int, home: str) -> dict[str, str]:
    """The complete environment a program sees: nothing inherited, thread pools capped to its CPUs."""
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "USER": "sandbox", "LOGNAME": "sandbox", "TMPDIR": "/tmp",
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
           "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
    env.update({name: str(max(1, int(cpus))) for name in THREAD_VARS})
    return env


def account_files(uid: int) -> dict[str, str]:
    """/etc/passwd and /etc/group naming root, nobody and the program's uid (no account exists for it on the host)."""
    users = {0: "root", 65534: "nobody"}
    users.setdefault(uid, "sandbox")
    return {"passwd": "".join(f"{name}:x:{n}:{n}:{name}:/nonexistent:/usr/sbin/nologin\n" for n, name in users.items()),
            "group": "".join(f"{name}:x:{n}:\n" for n, name in users.items())}


def interpreter_roots() -> list[str]:
    """Directories that hold this interpreter and its libraries (bound read-only into the sandbox)."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}
    kept = []
    for root in sorted(roots, key=len):
        if root.startswith("/usr/") or any(root.startswith(k + "/") for k in kept) or root in kept:
            continue
        kept.append(root)
    return kept


def _ancestors(path: str) -> list[str]:
    parts, out = path.strip("/").split("/")[:-1], []
    for i in range(len(parts)):
        out.append("/" + "/".join(parts[: i + 1]))
    return out


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for path in ETC_FILES:
        args += ["--ro-bind-try", path, path]
    return args


def bwrap_args(bwrap: str, paths: RunPaths, env: dict[str, str], disk_mb: int, as_root: bool,
               drop_uid_inside: bool, tmpfs_size: bool, seccomp_fd: int | None) -> list[str]:
    made = {"/usr", "/etc", "/tmp", "/dev", "/proc", "/job", "/sandbox"}
    args = [bwrap] + _system_binds()
    tmp_bytes, shm_bytes = writable_area(disk_mb)
    size = (lambda n: ["--size", str(n)]) if tmpfs_size else (lambda n: [])
    # /job lives inside /tmp so that files, scratch and cwd share ONE quota (a separate tmpfs each would
    # multiply it); bwrap's --dev already made /dev/shm a directory, so it gets its own small tmpfs.
    args += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", *size(tmp_bytes), "--tmpfs", "/tmp",
             "--perms", "1777", *size(shm_bytes), "--tmpfs", "/dev/shm",
             "--perms", "1777", "--dir", JOB_IN_TMP, "--symlink", JOB_IN_TMP, "/job"]
    # After the tmpfs mounts, so an interpreter or venv that lives under /tmp (e.g. a CI checkout) stays visible
    for root in interpreter_roots():
        for parent in _ancestors(root):
            if parent not in made:  # bwrap would create it 0700, unreadable for the sandbox uid
                args += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        args += ["--ro-bind", root, root]
    for name in JOB_FILES:
        args += ["--ro-bind-try", os.path.join(paths.job_dir, name), f"{JOB_IN_TMP}/{name}"]
    for name in ACCOUNT_FILES:
        args += ["--ro-bind", os.path.join(paths.run_dir, name), f"/etc/{name}"]
    args += ["--perms", "0755", "--dir", "/sandbox", "--ro-bind", paths.runner, "/sandbox/runner.py"]
    # bwrap's own root and /dev are unsized tmpfs owned by the sandbox uid when it runs unprivileged:
    # read-only, so the sized tmpfs above are the only places a program can write
    args += ["--remount-ro", "/dev", "--remount-ro", "/"]
    if seccomp_fd is not None:  # the kernel installs it before exec'ing the command (no cost in the runner)
        args += ["--seccomp", str(seccomp_fd)]
    args += ["--chdir", "/job", "--die-with-parent", "--new-session", "--clearenv"]
    for key, value in env.items():
        args += ["--setenv", key, value]
    args += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    if not as_root:
        args += ["--unshare-user", "--disable-userns"]
    elif drop_uid_inside:  # keep only what the inner setpriv needs to drop to the sandbox uid, nothing else
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    else:  # still uid 0 inside: empty the bounding set too, or exec would hand root every capability back
        args += ["--cap-drop", "ALL"]
    return args + ["--"]


def setpriv_drop(setpriv: str, uid: int) -> list[str]:
    return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--pdeathsig", "KILL"]


def prlimit_args(prlimit: str, cpu_s: int, as_bytes: int, fsize: int, nofile: int, nproc: int | None) -> list[str]:
    args = [prlimit, f"--as={as_bytes}", f"--cpu={cpu_s}:{cpu_s + 1}", f"--fsize={fsize}", "--core=0",
            f"--nofile={nofile}"]
    return args + ([f"--nproc={nproc}"] if nproc else [])


def affinity_args(taskset: str, cores: list[int]) -> list[str]:
    """Pin the run to `cores` (the CPU bound where there is no cpu cgroup; RLIMIT_CPU caps the total)."""
    return [taskset, "--cpu-list", ",".join(str(c) for c in cores)]


def cgroup_launcher(procs_files: list[str]) -> list[str]:
    """`sh -c` that moves itself into every cgroup, then execs the rest of argv."""
    joins = " && ".join(f'echo $$ > "${i + 1}"' for i in range(len(procs_files)))
    script = f'{joins} && shift {len(procs_files)} && exec "$@"'
    return ["/bin/sh", "-c", script, "ttt-sandbox-launcher", *procs_files]
