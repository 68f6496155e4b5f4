"""Programs cannot make namespaces, mount, or open non-AF_UNIX sockets, whatever the mode (issue 14 item 4).

Each program calls the raw syscall through ctypes. A clone that succeeds is a fork: the child reports what
it could do inside its new user namespace (mount a tmpfs: the actual escalation) and exits at once.
"""

from __future__ import annotations

import errno
import textwrap

import pytest

from sandbox_helpers import require
from envs.sandbox import Limits, SandboxJob, run_sandboxed
from envs.sandbox.detect import detect_profile

PRELUDE = textwrap.dedent("""
    import ctypes, os, socket
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    SIGCHLD = 17
    NEW = dict(NEWNS=0x20000, NEWCGROUP=0x2000000, NEWUTS=0x4000000, NEWIPC=0x8000000,
               NEWUSER=0x10000000, NEWPID=0x20000000, NEWNET=0x40000000)

    def call(nr, *args):
        r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(a) if isinstance(a, int) else a for a in args])
        return r, (ctypes.get_errno() if r < 0 else 0)

    def in_child(r):
        '''After a successful clone/fork: the child tries to mount, reports by exit code, never returns.'''
        if r != 0:
            return r
        fd, _ = call(430, b"tmpfs", 0)  # fsopen: works for the root of a fresh user namespace
        os._exit(42 if fd >= 0 else 43)

    def outcome(r, err):
        if r > 0:  # we are the parent of a clone that worked
            _, status = os.waitpid(r, 0)
            return "created; child mount %s" % ("WORKED" if os.WEXITSTATUS(status) == 42 else "failed")
        return "errno %d" % err
""")


def run(body: str, profile=None) -> dict:
    src = PRELUDE + "def main():\n" + textwrap.indent(textwrap.dedent(body), "    ")
    out = run_sandboxed(SandboxJob(src, "main", result="json"), Limits(timeout_s=30), profile=profile)
    assert out.ok, out.message + out.stderr_tail
    return out.value


CLONES = """
res = {}
for name in ("NEWUSER", "NEWNS", "NEWNET", "NEWPID", "NEWIPC", "NEWUTS", "NEWCGROUP"):
    flags = NEW[name] | (NEW["NEWUSER"] if name != "NEWUSER" else NEW["NEWNS"] | NEW["NEWNET"]) | SIGCHLD
    r, err = call(56, flags, 0, 0, 0, 0)  # clone(flags, stack=0): a fork into new namespaces
    res[name] = outcome(in_child(r), err)
class CloneArgs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("flags", "pidfd", "child_tid", "parent_tid", "exit_signal",
                "stack", "stack_size", "tls", "set_tid", "set_tid_size", "cgroup")]
args = CloneArgs(flags=NEW["NEWUSER"] | NEW["NEWNS"], exit_signal=SIGCHLD)
r, err = call(435, ctypes.byref(args), ctypes.sizeof(args))
res["clone3"] = outcome(in_child(r), err)
return res
"""


@pytest.mark.parametrize("disabled", [set(), {"bwrap"}, {"uid_drop"}], ids=["full", "no-bwrap", "no-uid-drop"])
def test_no_new_namespaces_by_clone_or_clone3(disabled):
    profile = detect_profile(disabled)
    require(profile.layers(), "seccomp")
    res = run(CLONES, profile)
    for name in ("NEWUSER", "NEWNS", "NEWNET", "NEWPID", "NEWIPC", "NEWUTS", "NEWCGROUP"):
        assert res[name] == f"errno {errno.EPERM}", (name, res)
    assert res["clone3"] == f"errno {errno.ENOSYS}", res  # flags are in memory: clone3 is refused whole


def test_threads_fork_and_subprocess_still_work():
    """glibc's pthread_create and fork fall back from clone3 to clone(2) without namespace flags."""
    value = run("""
    import threading, subprocess, multiprocessing
    box = []
    t = threading.Thread(target=box.append, args=(1,))
    t.start(); t.join()
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    echo = subprocess.run(["/bin/echo", "hi"], capture_output=True, text=True).stdout
    with multiprocessing.Pool(2) as pool:
        squares = pool.map(abs, [-1, -2])
    return [box, os.WEXITSTATUS(status), echo, squares]
    """)
    assert value == [[1], 7, "hi\n", [1, 2]]


MOUNT_FAMILY = """
res = {}
res["fsopen"] = call(430, b"tmpfs", 0)[1]
res["fspick"] = call(433, -100, b"/", 0)[1]
res["open_tree"] = call(428, -100, b"/tmp", 1)[1]  # OPEN_TREE_CLONE
res["move_mount"] = call(429, -1, b"", -100, b"/tmp", 0)[1]
res["fsconfig"] = call(431, 0, 0, 0, 0, 0)[1]
res["fsmount"] = call(432, 0, 0, 0)[1]
res["mount_setattr"] = call(442, -100, b"/tmp", 0, 0, 0)[1]
res["mount"] = call(165, b"none", b"/tmp", b"tmpfs", 0, 0)[1]
res["unshare"] = call(272, NEW["NEWUSER"])[1]
return res
"""


@pytest.mark.parametrize("disabled", [set(), {"bwrap"}], ids=["full", "no-bwrap"])
def test_the_fd_based_mount_api_is_denied(disabled):
    profile = detect_profile(disabled)
    require(profile.layers(), "seccomp")
    res = run(MOUNT_FAMILY, profile)
    assert all(err == errno.EPERM for err in res.values()), res


SOCKETS = """
res = {}
for name, family in (("vsock", 40), ("inet", socket.AF_INET), ("inet6", socket.AF_INET6), ("netlink", 16),
                     ("packet", 17), ("alg", 38), ("bluetooth", 31), ("tipc", 30), ("rds", 21), ("xdp", 44)):
    r, err = call(41, family, socket.SOCK_STREAM if family in (40, 2, 10) else socket.SOCK_DGRAM, 0)
    res[name] = err if r < 0 else "OPENED"
    r, err = call(53, family, socket.SOCK_STREAM, 0, ctypes.byref((ctypes.c_int * 2)()))  # socketpair
    res[name + "_pair"] = err if r < 0 else "OPENED"
a, b = socket.socketpair()
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
res["unix"] = "ok"
return res
"""


@pytest.mark.parametrize("disabled", [set(), {"bwrap"}], ids=["full", "no-bwrap"])
def test_only_unix_sockets_can_be_opened(disabled):
    profile = detect_profile(disabled)
    require(profile.layers(), "seccomp")
    res = run(SOCKETS, profile)
    assert res.pop("unix") == "ok"
    assert all(err == errno.EPERM for err in res.values()), res  # the filter, not a missing module
