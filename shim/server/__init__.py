"""`ttt serve`: Tinker's HTTP wire protocol (SDK 0.38 protobuf and 0.7 JSON) over the local Engine."""

from shim.server.main import serve_main, start_server

__all__ = ["serve_main", "start_server"]
