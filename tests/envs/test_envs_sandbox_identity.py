"""Concurrent evaluations cannot reach each other (issue 23 item 4): as root every evaluation runs as a uid of
its own (envs/sandbox/identity.py), so even without bwrap's pid namespace one program can neither signal
another evaluation's program nor read its /proc/<pid>/fd or environ (with the shared uid 65534 it could kill
it, or forge its result through its fds); with bwrap it cannot even see it."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from envs.sandbox import Limits, SandboxJob, run_sandboxed
from envs.sandbox.detect import current_profile, detect_profile
from envs.sandbox.identity import UID_BASE, UID_COUNT, kill_uid, lease, processes_of

VICTIM = "import os, time\ndef main(hold_s):\n    time.sleep(hold_s)\n    return [os.getuid(), os.getpid()]\n"

# Finds every other sandboxed program on the host (runner.py processes of another job dir) and attacks it.
ATTACKER = """
import errno, os, signal, time

def others():
    mine = os.getcwd()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = open("/proc/%s/cmdline" % pid, "rb").read().split(b"\\0")
        except OSError:
            continue
        job = os.path.realpath(argv[-2].decode(errors="replace")) if len(argv) > 1 else ""
        if any(a.endswith(b"runner.py") for a in argv) and job != mine:  # a runner (or its bwrap) of another job
            found.append(int(pid))
    return found

def attempt(call):
    try:
        call()
        return "done"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def main():
    deadline = time.monotonic() + 4
    found = others()
    while not found and time.monotonic() < deadline:
        time.sleep(0.05)
        found = others()
    report = []
    for pid in found:
        uid = int(open("/proc/%d/status" % pid).read().split("Uid:")[1].split()[0]) if os.path.exists(
            "/proc/%d" % pid) else None
        report.append({"pid": pid, "uid": uid,
                       "fd": attempt(lambda: os.listdir("/proc/%d/fd" % pid)),
                       "environ": attempt(lambda: open("/proc/%d/environ" % pid, "rb").read()),
                       "kill": attempt(lambda: os.kill(pid, signal.SIGKILL))})
    return [os.getuid(), report]
"""


def run_pair(profile, hold_s: float = 5.0):
    """The victim and the attacker at the same time; the attacker starts once the victim runs."""
    results = {}
    limits = Limits(timeout_s=30)

    def victim():
        job = SandboxJob(VICTIM, "main", result="json", args=[hold_s])
        results["victim"] = run_sandboxed(job, limits, profile=profile)

    thread = threading.Thread(target=victim)
    thread.start()
    time.sleep(1.0)  # the victim's interpreter is up
    results["attacker"] = run_sandboxed(SandboxJob(ATTACKER, "main", result="json"), limits, profile=profile)
    thread.join()
    return results["victim"], results["attacker"]


def test_without_bwrap_concurrent_programs_have_own_uids_and_cannot_touch_each_other():
    profile = detect_profile({"bwrap"})
    if not profile.drop_uid:
        pytest.skip("per-evaluation uids need root and setpriv; the level without them says it does not isolate")
    victim, attacker = run_pair(profile)
    assert victim.ok, (victim.status, victim.message)  # not killed
    assert attacker.ok, attacker.message + attacker.stderr_tail
    victim_uid, victim_pid = victim.value
    attacker_uid, report = attacker.value
    assert victim_uid != attacker_uid and all(UID_BASE <= u < UID_BASE + UID_COUNT for u in (victim_uid, attacker_uid))
    print(f"victim uid {victim_uid}, attacker uid {attacker_uid}: {report}")
    assert victim_pid in [r["pid"] for r in report]  # it sees the victim (no pid namespace) ...
    for r in report:  # ... but can touch neither it nor any other sandboxed program on this host
        assert r["fd"] == "EACCES" and r["environ"] == "EACCES" and r["kill"] == "EPERM", r


def test_with_bwrap_concurrent_programs_do_not_see_each_other(layers):
    if not layers["bwrap"]:
        pytest.skip("bwrap is off on this host")
    victim, attacker = run_pair(current_profile(), hold_s=6.0)
    assert victim.ok and attacker.ok, (victim.message, attacker.message)
    attacker_uid, report = attacker.value
    assert report == []  # its own pid namespace: no other program, no host process at all
    if current_profile().drop_uid:
        assert victim.value[0] != attacker_uid


def test_each_lease_is_exclusive_and_a_dead_holders_processes_are_killed(profile):
    if not profile.drop_uid:
        pytest.skip("per-evaluation uids need root and setpriv")
    first, second = lease(profile.uids_dir), lease(profile.uids_dir)
    try:
        assert first.uid != second.uid
        uid = first.uid
        sleeper = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "300"])
        deadline = time.monotonic() + 10
        while sleeper.pid not in processes_of(uid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert processes_of(uid) == [sleeper.pid]
        os.close(first._fd)  # the holder dies mid-run: the lock goes, the file never says "clean"
        first._fd = -1
        held = []
        try:  # lease until that uid comes back (a lower one may have been freed meanwhile by another process)
            while True:
                again = lease(profile.uids_dir)
                held.append(again)
                if again.uid >= uid:
                    break
            assert sleeper.wait(timeout=10) == -9  # whoever leased it next killed the leftover first
        finally:
            for h in held:
                h.release(sweep=False)
    finally:
        first.release(sweep=True)
        second.release(sweep=True)
        if sleeper.poll() is None:
            sleeper.kill()


def test_kill_uid_finds_the_whole_tree(profile):
    """Without a cgroup kill or a pid namespace, the evaluation's uid is how its whole tree is found."""
    if not profile.drop_uid:
        pytest.skip("per-evaluation uids need root and setpriv")
    held = lease(profile.uids_dir)
    try:
        uid = held.uid
        script = "sleep 300 & setsid sleep 301 & (sleep 302 &) ; sleep 303"
        tree = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sh", "-c", script],
                                start_new_session=True)
        deadline = time.monotonic() + 10
        while len(processes_of(uid)) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(processes_of(uid)) == 5
        kill_uid(uid)
        assert processes_of(uid) == [] and tree.wait(timeout=5) == -9
    finally:
        held.release(sweep=True)
