"""The seccomp-bpf filter for sandboxed programs, compiled once per process with libseccomp (pyseccomp).

Default allow; EPERM for what a verifier program never needs and an attacker wants (SANDBOX.md §4):
internet/netlink/packet sockets (AF_UNIX stays allowed for multiprocessing), process inspection, mounts and
namespaces, kernel module/keyring/bpf/perf/io_uring interfaces. The compiled BPF bytes are loaded by the
in-sandbox runner before any candidate code runs (envs/sandbox_runner.py).
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
)
AF_NETLINK, AF_PACKET = 16, 17
DENIED_SOCKET_FAMILIES = (socket.AF_INET, socket.AF_INET6, AF_NETLINK, AF_PACKET)


@functools.lru_cache(maxsize=1)
def compiled_filter() -> bytes:
    """The BPF program as bytes; raises ImportError/OSError when libseccomp is unavailable."""
    import pyseccomp as sc

    flt = sc.SyscallFilter(sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    for name in DENIED_SYSCALLS:
        flt.add_rule(deny, name)
    for family in DENIED_SOCKET_FAMILIES:
        flt.add_rule(deny, "socket", sc.Arg(0, sc.EQ, family))
    with tempfile.TemporaryFile() as f:  # libseccomp writes through a real file descriptor
        flt.export_bpf(f)
        f.seek(0)
        code = f.read()
    if not code or len(code) % 8:
        raise OSError("libseccomp produced no valid BPF program")
    return code
