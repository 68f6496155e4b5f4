"""A future shaped like the SDK's APIFuture: `.result(timeout)`, `await`, `.result_async()`, `.future()`.

It wraps a concurrent future from the engine and converts the raw result into the SDK type once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class ShimFuture(Generic[T]):
    def __init__(self, inner: concurrent.futures.Future, convert: Callable[[Any], T] = lambda x: x):
        self._converted: concurrent.futures.Future = concurrent.futures.Future()

        def _done(f: concurrent.futures.Future) -> None:
            try:
                self._converted.set_result(convert(f.result()))
            except BaseException as exc:
                self._converted.set_exception(exc)

        inner.add_done_callback(_done)

    @classmethod
    def completed(cls, value: T) -> "ShimFuture[T]":
        inner: concurrent.futures.Future = concurrent.futures.Future()
        inner.set_result(value)
        return cls(inner)

    def result(self, timeout: float | None = None) -> T:
        return self._converted.result(timeout)

    async def result_async(self, timeout: float | None = None) -> T:
        return await asyncio.wait_for(asyncio.wrap_future(self._converted), timeout)

    def __await__(self):
        return self.result_async().__await__()

    def future(self) -> concurrent.futures.Future:
        return self._converted

    def done(self) -> bool:
        return self._converted.done()


class ClientFuture(ShimFuture[T]):
    """What the SDK's client-creation methods return (0.38): a future of the client that, for older code,
    also behaves as the client itself (attribute access waits for it)."""

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.result(), name)

    @classmethod
    def of(cls, client) -> "ClientFuture":
        inner: concurrent.futures.Future = concurrent.futures.Future()
        inner.set_result(client)
        return cls(inner)
