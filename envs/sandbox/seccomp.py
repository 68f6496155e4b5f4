"""The seccomp-bpf filter for sandboxed programs, compiled once per process with libseccomp (pyseccomp).

Default allow; EPERM for what a verifier program never needs and an attacker wants (SANDBOX.md §4):
process inspection, mounts (both the old mount(2) and the fd-based fsopen/fsmount/open_tree family) and
namespaces, kernel module/keyring/bpf/perf/io_uring interfaces, and every socket family except AF_UNIX
(multiprocessing needs it; AF_INET*, NETLINK, PACKET, VSOCK, ALG, ... are refused). The filter is the same
in every mode, root included.

New namespaces: unshare/setns are denied outright, and clone(2) is denied when its flags ask for any new
namespace (a user namespace would hand the program every capability inside it, and with a new mount
namespace, mounts). clone3(2) passes its flags in memory, which seccomp cannot read, so clone3 fails with
ENOSYS: glibc then falls back to clone(2), whose flags are checked (threads and fork keep working).
The compiled BPF bytes go to bwrap (--seccomp FD) or are loaded by the in-sandbox runner before any candidate
code runs (envs/sandbox/runner.py).
"""

from __future__ import annotations

import errno
import functools
import socket
import tempfile

DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root", "chroot",
    "unshare", "setns", "kexec_load", "kexec_file_load", "bpf", "perf_event_open", "keyctl", "add_key",
    "request_key", "userfaultfd", "io_uring_setup", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "open_by_handle_at", "name_to_handle_at",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr", "open_tree_attr",
)
# Syscalls newer than some libseccomp releases know, by their number in the table shared by all
# architectures since Linux 5.1 (so an old libseccomp still gets them denied).
UNIFIED_NUMBERS = {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
                   "fspick": 433, "clone3": 435, "mount_setattr": 442, "open_tree_attr": 467}
CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}  # CLONE_NEWTIME (0x80) exists only for clone3/unshare: in clone(2) that bit is part of the exit signal
ALLOWED_SOCKET_FAMILY = socket.AF_UNIX


def _number(sc, name: str) -> int | str:
    try:
        if sc.resolve_syscall(sc.Arch.NATIVE, name) >= 0:
            return name
    except Exception:  # noqa: BLE001 -- unknown to this libseccomp: fall through to the shared number
        pass
    if name in UNIFIED_NUMBERS:
        return UNIFIED_NUMBERS[name]
    raise OSError(f"libseccomp does not know the syscall {name}")


@functools.lru_cache(maxsize=1)
def compiled_filter() -> bytes:
    """The BPF program as bytes; raises ImportError/OSError when libseccomp is unavailable."""
    import pyseccomp as sc

    flt = sc.SyscallFilter(sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    for name in DENIED_SYSCALLS:
        flt.add_rule(deny, _number(sc, name))
    flt.add_rule(sc.ERRNO(errno.ENOSYS), _number(sc, "clone3"))
    for flag in CLONE_NAMESPACE_FLAGS.values():  # one rule per flag: libseccomp ORs the rules
        flt.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    for call in ("socket", "socketpair"):
        flt.add_rule(deny, call, sc.Arg(0, sc.NE, ALLOWED_SOCKET_FAMILY))
    with tempfile.TemporaryFile() as f:  # libseccomp writes through a real file descriptor
        flt.export_bpf(f)
        f.seek(0)
        code = f.read()
    if not code or len(code) % 8:
        raise OSError("libseccomp produced no valid BPF program")
    return code
