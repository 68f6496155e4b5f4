"""Run one model's requests in seq_id order, once each (TINKER_API.md 7.1, 7.6).

The SDK numbers every request of a TrainingClient 1, 2, 3, ... and may deliver them out of order (chunks of
one forward_backward arrive concurrently, first chunk last) or twice (HTTP retries with the same seq_id).
So: a request runs only when all lower seq_ids have run; a repeated seq_id gets the first one's future.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Callable

MAX_AHEAD = 100_000  # a seq_id this far past the next one is a client bug, not a gap to wait for
REMEMBERED = 4096  # finished seq_ids kept for idempotent retries


class SeqOrderedQueue:
    def __init__(self, name: str, first_seq_id: int = 1):
        self.name = name
        self._next = first_seq_id
        self._pending: dict[int, tuple[Callable[[], object], Future]] = {}
        self._done: OrderedDict[int, Future] = OrderedDict()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=f"seq-queue-{name}", daemon=True)
        self._thread.start()

    def submit(self, seq_id: int, fn: Callable[[], object]) -> Future:
        """The future of request `seq_id`; ValueError for seq_ids that can never run."""
        if isinstance(seq_id, bool) or not isinstance(seq_id, int):
            raise ValueError(f"seq_id must be an integer, got {seq_id!r}")
        with self._cond:
            if self._closed:
                raise ValueError(f"model {self.name} is closed")
            if seq_id in self._done:
                return self._done[seq_id]
            if seq_id in self._pending:
                return self._pending[seq_id][1]
            if seq_id < self._next:
                raise ValueError(f"seq_id {seq_id} of model {self.name} already ran (next is {self._next})")
            if seq_id >= self._next + MAX_AHEAD:
                raise ValueError(f"seq_id {seq_id} of model {self.name} is too far ahead (next is {self._next})")
            future: Future = Future()
            self._pending[seq_id] = (fn, future)
            self._cond.notify_all()
            return future

    @property
    def next_seq_id(self) -> int:
        return self._next

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for _, future in self._pending.values():
                future.set_exception(ValueError(f"model {self.name} was closed before this request ran"))
            self._pending.clear()
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closed and self._next not in self._pending:
                    self._cond.wait()
                if self._closed:
                    return
                seq_id = self._next
                fn, future = self._pending.pop(seq_id)
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # the error belongs to this request only
                    future.set_exception(exc)
            with self._cond:
                self._next = seq_id + 1
                self._done[seq_id] = future
                while len(self._done) > REMEMBERED:
                    self._done.popitem(last=False)
