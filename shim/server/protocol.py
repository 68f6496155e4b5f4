"""uvicorn's httptools protocol with the two guards it lacks, and JSON instead of text for its own errors.

- A deadline for request headers: uvicorn arms no timer between accepting a connection (or the first byte of a
  keep-alive request) and the end of the headers, so a client trickling one header byte every few seconds
  (slowloris) would hold its connection forever. Here the headers must be complete within header_timeout_s of
  the connection (or of the request's first byte); otherwise 408 and close.
- A cap on header bytes: llhttp accepts headers of any size; past max_header_bytes -> 431 and close.
- Requests the parser rejects (e.g. a chunk-size line of -1) get uvicorn's 400, but as a JSON body like every
  other error of this server.
The request body's own limit and read timeout are enforced where the app reads it (asgi.py).
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def json_error_bytes(status: int, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, _REASONS.get(status, b"Error"), len(body))) + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024
    on_reject = staticmethod(lambda status: None)  # metrics hook: a request refused before reaching the app

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_headers = True
        self._header_bytes = 0
        self._header_timer = None
        self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline_passed)

    def _disarm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _reject(self, status: int, message: str) -> None:
        self._disarm_header_deadline()
        if not self.transport.is_closing():
            self.on_reject(status)
            self.transport.write(json_error_bytes(status, message))
            self.transport.close()

    def _header_deadline_passed(self) -> None:
        self._header_timer = None
        if self._in_headers:
            self._reject(408, f"request headers not received within {self.header_timeout_s:g} s")

    def data_received(self, data: bytes) -> None:
        was_in_headers = self._in_headers
        super().data_received(data)
        if was_in_headers and self._in_headers and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._reject(431, f"request headers larger than {self.max_header_bytes} bytes")

    def connection_lost(self, exc) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    # parser callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        # headers that arrive in one read never reach the per-read count in data_received
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.max_header_bytes:
            self._rejection = (431, f"request headers larger than {self.max_header_bytes} bytes")
            raise RuntimeError("headers too large")  # the parser stops; uvicorn calls send_400_response
        super().on_header(name, value)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0
        self._rejection = None
        self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm_header_deadline()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        status, message = getattr(self, "_rejection", None) or (400, f"malformed HTTP request: {msg}")
        self._reject(status, message)
