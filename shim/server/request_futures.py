"""request_id -> pending operation, for `retrieve_future` long polls (TINKER_API.md 7.3).

A retried submission (same idempotency key, e.g. (model_id, seq_id)) gets the request_id of the first one.
Finished entries are forgotten `keep_s` seconds after they complete.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

Encoder = Callable[[Any, bool], tuple[str, bytes]]  # (result, client accepts protobuf) -> (content type, body)


@dataclass
class Pending:
    future: concurrent.futures.Future
    encode: Encoder
    extra: dict = field(default_factory=dict)  # returned with the request_id (e.g. sample_sequence_ids)
    finished_at: float | None = None
    key: Hashable | None = None
    owner: str = ""  # the key id that submitted it: only it may retrieve the result


class RequestFutures:
    def __init__(self, keep_s: float = 900.0):
        self.keep_s = keep_s
        self._items: dict[str, Pending] = {}
        self._by_key: dict[Hashable, str] = {}
        self._finished: deque[tuple[float, str]] = deque()  # (finished_at, request_id), oldest first
        self._lock = threading.Lock()

    def add(self, key: Hashable | None, start: Callable[[], concurrent.futures.Future], encode: Encoder,
            extra: dict | None = None, owner: str = "") -> tuple[str, Pending]:
        """The request_id of `key`'s operation, starting it (`start()`) only the first time."""
        with self._lock:
            self._sweep()
            if key is not None and key in self._by_key and self._by_key[key] in self._items:
                request_id = self._by_key[key]
                return request_id, self._items[request_id]
            pending = Pending(start(), encode, dict(extra or {}), key=key, owner=owner)
            request_id = str(uuid.uuid4())
            self._items[request_id] = pending
            if key is not None:
                self._by_key[key] = request_id
        pending.future.add_done_callback(lambda _: self._finish(request_id, pending))
        return request_id, pending

    def get(self, request_id: str) -> Pending | None:
        with self._lock:
            return self._items.get(request_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def pending(self) -> int:
        """Operations submitted and not finished (the /metrics queue depth)."""
        with self._lock:
            return len(self._items) - len(self._finished)

    def _finish(self, request_id: str, pending: Pending) -> None:
        with self._lock:
            pending.finished_at = time.monotonic()
            self._finished.append((pending.finished_at, request_id))

    def _sweep(self) -> None:
        """Forget entries finished more than keep_s ago: O(expired), not O(all entries), per call."""
        cutoff = time.monotonic() - self.keep_s
        while self._finished and self._finished[0][0] < cutoff:
            _, request_id = self._finished.popleft()
            pending = self._items.pop(request_id, None)
            if pending is not None and pending.key is not None and self._by_key.get(pending.key) == request_id:
                del self._by_key[pending.key]
