"""HTTP/1.1 front end of TinkerApi on the stdlib ThreadingHTTPServer: API-key check, body size limit, routing,
and the mapping of errors to 4xx/5xx replies. A bad request gets a JSON {"error": ...} reply and never takes the
server (or another client's model) down.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from shim.server.endpoints import Reply, Request, TinkerApi
from shim.server.wire_decode import BadRequest

log = logging.getLogger(__name__)
PREFIX = "/api/v1/"
DEFAULT_MAX_BODY = 32 * 1024 * 1024  # fwd/bwd chunks are <= ~5 MB (client/config); samples are far smaller
UNAUTHENTICATED = {("GET", "healthz")}
_ONE_WRITE_MAX = 1 << 20  # replies up to this size are joined with their headers into one socket write


def _match(routes: dict, method: str, endpoint: str):
    """-> (handler, path params) for `endpoint`, with {id} segments matching one path segment."""
    handler = routes.get((method, endpoint))
    if handler is not None:
        return handler, {}
    for (m, pattern), handler in routes.items():
        if m == method and "{" in pattern:
            regex = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(pattern)) + "$"
            found = re.match(regex, endpoint)
            if found:
                return handler, found.groupdict()
    return None, {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the SDK reuses connections
    # TCP_NODELAY: with Nagle on, a reply written as two segments (headers, then body) waits for the client's
    # delayed ACK of the first one, ~40 ms on Linux, on every request. _send also writes a reply in one piece.
    disable_nagle_algorithm = True
    server: "TinkerHTTPServer"

    def log_message(self, fmt, *args):  # one debug line per request instead of stderr noise
        log.debug("%s " + fmt, self.address_string(), *args)

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        if self.request_version != "HTTP/0.9" and len(reply.body) <= _ONE_WRITE_MAX:  # all in one send
            self._headers_buffer.extend((b"\r\n", reply.body))
            self.flush_headers()
        else:  # large bodies: no copy; TCP_NODELAY sends both parts at once
            self.end_headers()
            self.wfile.write(reply.body)

    def _fail(self, status: int, message: str) -> None:
        self._send(Reply(status, "application/json", json.dumps({"error": message}).encode()))

    def _read_body(self) -> bytes:
        limit = self.server.max_body
        if self.headers.get("Content-Encoding", "identity").lower() not in ("identity", ""):
            raise _HttpError(415, "Content-Encoding is not supported; send the body uncompressed")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(body)
                if len(body) + size > limit:
                    self.close_connection = True
                    raise _HttpError(413, f"body larger than {limit} bytes")
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > limit:
            self.close_connection = True  # the unread body would otherwise be parsed as the next request
            raise _HttpError(413, f"body of {length} bytes is larger than the limit {limit}")
        return self.rfile.read(length) if length else b""

    def _serve(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if not path.startswith(PREFIX):
                raise _HttpError(404, f"unknown path {path}: the API lives under {PREFIX}")
            endpoint = path[len(PREFIX):].strip("/")
            if (method, endpoint) not in UNAUTHENTICATED:
                key = self.headers.get("X-API-Key") or ""
                if not hmac.compare_digest(key.encode(), self.server.api_key.encode()):
                    self.close_connection = method == "POST"  # we do not read the body of a rejected request
                    raise _HttpError(401, "invalid or missing X-API-Key")
            handler, params = _match(self.server.api.routes, method, endpoint)
            if handler is None:
                raise _HttpError(404, f"unknown endpoint {method} {endpoint}")
            body = self._read_body() if method == "POST" else b""
            request = Request(method, endpoint, body, (self.headers.get("Content-Type") or "").lower(),
                              "application/x-protobuf" in (self.headers.get("Accept") or "").lower(), params)
            reply = handler(request)
        except _HttpError as exc:
            return self._fail(exc.status, exc.message)
        except KeyError as exc:  # unknown model / session / request ids
            return self._fail(404, str(exc.args[0] if exc.args else exc))
        except (BadRequest, ValueError, TypeError, FileNotFoundError) as exc:
            return self._fail(400, f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            log.error("error in %s %s: %s", method, path, traceback.format_exc())
            return self._fail(500, f"internal error: {type(exc).__name__}: {exc}")
        self._send(reply)


class _HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class TinkerHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, api: TinkerApi, api_key: str, host: str = "127.0.0.1", port: int = 0,
                 max_body: int = DEFAULT_MAX_BODY):
        if not api_key:
            raise ValueError("an API key is required")
        self.api, self.api_key, self.max_body = api, api_key, max_body
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"
