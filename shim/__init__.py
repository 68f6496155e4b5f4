"""A Tinker-compatible client API over cloud Tinker or local hardware, and a local server for the official SDK.

    client = shim.make_service_client("local", model="tiny")            # in-process learner + sampler
    client = shim.make_service_client("tinker", base_url="http://127.0.0.1:8000", api_key="tml-...")
    training = client.create_lora_training_client(base_model="tiny", rank=8)

Values are the SDK's own types (`shim.types` is `tinker.types`). The server: `shim.server.serve_main`.
"""

from tinker import types

from shim.factory import make_engine, make_service_client

__all__ = ["make_engine", "make_service_client", "types"]
