"""In-sandbox runner: executes ONE candidate program and writes its outputs as data, never a score.

Run as `python -I -S runner.py [JOB_DIR]` (default /job, the bwrap mount point).
Stdlib only (numpy is imported only when the job has array inputs or an npz result), so that a trivial
program costs little more than `python -c pass`.

Everything here runs in the same process as untrusted code, so nothing it writes is trusted: the parent
re-validates every byte (envs/sandbox/result_channel.py) and computes scores itself. The runner only
  1. applies resource limits and the seccomp filter before any candidate code runs (belt and braces:
     when the outer `prlimit` is missing these are the only limits);
  2. execs the program and calls its entry function as `call.json` says;
  3. converts the return value into plain data: npz (numeric arrays, no pickle) or JSON (no NaN/Infinity),
     written to the result channel;
  4. writes the status last, with the phase that failed and a short error (and errno) if any.
The channels are two pipes the parent created and passed as inherited fds (numbers in call.json), as are
stdout and stderr: the program gets no host file or directory it could grow, and the parent reads each pipe
up to a cap. A program that writes to a channel itself only spoils its own result.
"""

import json
import os
import sys

PHASES = ("setup", "compile", "import", "entry", "call", "encode")


def _write_channel(fd, data):
    """All of `data` to a channel pipe (the parent reads it while we write)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _error_text(exc):
    """`Type: message (program.py line N)` without trusting the exception's own methods too far."""
    try:
        message = str(exc)[:400]
    except BaseException:  # an exception whose __str__ raises
        message = "<unprintable>"
    import traceback

    line = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == "program.py":
            line = " (program.py line %d)" % frame.lineno
    return "%s: %s%s" % (type(exc).__name__, message, line)


def _apply_rlimits(limits):
    import resource

    for name, value in (limits or {}).items():
        which = getattr(resource, "RLIMIT_" + name.upper())
        soft, hard = resource.getrlimit(which)
        value = int(value)
        if hard == resource.RLIM_INFINITY or value < hard:
            resource.setrlimit(which, (value, value))


def _install_seccomp(path):
    """Load a precompiled BPF program (made by the parent with libseccomp) for this process tree."""
    import ctypes

    with open(path, "rb") as f:
        code = f.read()

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(code, len(code))
    prog = SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


def _plain(value):
    """json.dumps default: numpy scalars/arrays become lists; anything else is refused."""
    module = type(value).__module__
    if module == "numpy" and hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError("cannot encode a %s as data" % type(value).__name__)


def _to_json(value, cap):
    text = json.dumps(value, allow_nan=False, default=_plain, separators=(",", ":"))
    data = text.encode("utf-8")
    if len(data) > cap:
        raise ValueError("result is %d bytes, over the %d byte cap" % (len(data), cap))
    return data


def _to_npz(value, cap, split):
    import io

    import numpy as np

    items = list(value) if split and isinstance(value, (tuple, list)) else [value]
    arrays = {}
    for i, item in enumerate(items):
        arr = np.asarray(item)
        if arr.dtype.kind not in "biuf":
            raise TypeError("output item %d has dtype %s; only numbers are accepted" % (i, arr.dtype))
        arrays["r%d" % i] = np.ascontiguousarray(arr)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    if len(data) > cap:
        raise ValueError("result is %d bytes, over the %d byte cap" % (len(data), cap))
    return data


def _load_inputs(job_dir, spec):
    if not spec.get("inputs"):
        return {}
    import numpy as np

    with np.load(os.path.join(job_dir, spec["inputs"]), allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


def run(job_dir):
    status = {"phase": "setup", "ok": False}
    spec = {}
    try:
        with open(os.path.join(job_dir, "call.json"), "rb") as f:
            spec = json.loads(f.read())
        # started with -S (no site: no .pth hooks, ~30 ms less); the parent names the library dirs
        sys.path.extend(p for p in spec.get("sys_path", []) if p not in sys.path)
        _apply_rlimits(spec.get("rlimits"))
        if spec.get("seccomp"):
            _install_seccomp(spec["seccomp"])
        inputs = _load_inputs(job_dir, spec)
        with open(os.path.join(job_dir, "program.py"), "rb") as f:
            source = f.read()

        status["phase"] = "compile"
        code = compile(source, "program.py", "exec")

        status["phase"] = "import"
        # A real module named `program` (not an exec'd dict) so that multiprocessing can pickle its
        # top-level functions; injected state globals exist before its body runs.
        module = type(sys)("program")
        module.__file__ = os.path.join(job_dir, "program.py")
        for name in spec.get("inject", []):
            setattr(module, name, inputs[name])
        sys.modules["program"] = module
        sys.path.insert(0, job_dir)
        exec(code, module.__dict__)
        namespace = module.__dict__

        status["phase"] = "entry"
        entry = spec["entry"]
        fn = namespace.get(entry)
        if not callable(fn):
            raise LookupError("the program defines no top-level function %s()" % entry)

        cap = int(spec.get("max_result_bytes", 8 << 20))
        if spec.get("mode") == "each":
            import copy

            results = []
            for args in spec["calls"]:
                status["phase"] = "call"
                try:
                    value = fn(*copy.deepcopy(args))
                    status["phase"] = "encode"
                    # frozen as plain data now, so one bad answer fails one test, not the run
                    results.append({"value": json.loads(json.dumps(value, allow_nan=False, default=_plain))})
                except Exception as exc:  # one failing test must not hide the others
                    results.append({"error": _error_text(exc)})
            status["phase"] = "encode"
            _write_channel(spec["result_fd"], _to_json(results, cap))
        else:
            kwargs = dict(spec.get("kwargs", {}))
            for name in spec.get("input_kwargs", []):
                kwargs[name] = inputs[name]
            status["phase"] = "call"
            value = fn(*spec.get("args", []), **kwargs)
            status["phase"] = "encode"
            if spec.get("result") == "json":
                data = _to_json(value, cap)
            else:
                data = _to_npz(value, cap, spec.get("split", True))
            status["phase"] = "write"
            _write_channel(spec["result_fd"], data)
        status = {"phase": "done", "ok": True}
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: record, never hang
        status["error"] = _error_text(exc)
        status["error_type"] = type(exc).__name__
        if isinstance(exc, OSError) and isinstance(exc.errno, int):  # e.g. ENOSPC: the writable area is full
            status["errno"] = exc.errno
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    try:
        _write_channel(spec["status_fd"], json.dumps(status).encode("utf-8"))
    except BaseException:  # no channel (bad call.json, or the program closed it): the parent sees no status
        return 2
    return 0 if status["ok"] else 1


if __name__ == "__main__":
    args = sys.argv[1:]
    code = run(args[0] if args else "/job")
    # Leave now: a program's leftover non-daemon threads or atexit hooks must not delay or alter the exit.
    os._exit(code)
