"""Start sandbox processes from ONE long-lived thread.

PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process (SANDBOX.md G5). A
sandbox started from a transient executor thread would be SIGKILLed the moment that thread finished, and one
started from the main thread of a Ray task is fine only while that thread lives. So every Popen goes through
this daemon thread, which lives as long as the process; callers wait on the returned Popen themselves.
"""

from __future__ import annotations

import queue
import subprocess
import threading
from concurrent.futures import Future

_lock = threading.Lock()
_queue: "queue.SimpleQueue[tuple[tuple, dict, Future]]" = queue.SimpleQueue()
_thread: threading.Thread | None = None


def _serve() -> None:
    while True:
        args, kwargs, future = _queue.get()
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(subprocess.Popen(*args, **kwargs))
        except BaseException as e:  # hand the error to the caller, keep serving
            future.set_exception(e)


def popen(*args, **kwargs) -> subprocess.Popen:
    """subprocess.Popen(*args, **kwargs), forked by the long-lived spawner thread."""
    global _thread
    with _lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_serve, name="sandbox-spawner", daemon=True)
            _thread.start()
    future: Future = Future()
    _queue.put((args, kwargs, future))
    return future.result()
