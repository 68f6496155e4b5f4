"""`ttt serve`'s HTTP server: the Starlette app (asgi.py) on uvicorn, with our guarded httptools protocol.

uvicorn brings keep-alive, TCP_NODELAY (asyncio and uvloop set it on every TCP transport), graceful shutdown
and a listen backlog we set to 2048 (the kernel caps it at net.core.somaxconn). We bind the socket ourselves so
that the port is known before serving starts (port 0 in tests and benches).
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from shim.server.protocol import GuardedHttpToolsProtocol

DEFAULT_MAX_BODY = 32 * 1024 * 1024  # fwd/bwd chunks are <= ~5 MB (client/config); samples are far smaller
BACKLOG = 2048


class TinkerHTTPServer:
    """serve_forever() runs uvicorn on the calling thread (its own event loop); shutdown() from any thread."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, *, max_body: int = DEFAULT_MAX_BODY,
                 header_timeout_s: float = 20.0, keep_alive_s: float = 65.0, graceful_s: float = 3.0,
                 backlog: int = BACKLOG, on_reject=None, api=None):
        self.api, self.max_body = api, max_body
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family, backlog=backlog)
        self.server_address = self.socket.getsockname()
        protocol = type("TinkerHttpProtocol", (GuardedHttpToolsProtocol,), {
            "header_timeout_s": header_timeout_s,
            "on_reject": staticmethod(on_reject or (lambda status: None))})
        # keep-alive longer than the SDK's idle connections live, so the server is not the side that closes
        # a connection the client is about to reuse
        config = uvicorn.Config(app, http=protocol, backlog=backlog, timeout_keep_alive=int(keep_alive_s),
                                timeout_graceful_shutdown=graceful_s, lifespan="off", access_log=False,
                                log_config=None, log_level="warning", server_header=False)
        self._server = uvicorn.Server(config)
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def started(self) -> bool:
        return self._server.started

    def serve_forever(self) -> None:
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def wait_started(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if self._stopped.is_set() or time.monotonic() > deadline:
                raise RuntimeError("ttt serve: the HTTP server did not start")
            time.sleep(0.01)

    def shutdown(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()
