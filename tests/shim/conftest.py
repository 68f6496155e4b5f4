"""Shared pieces of the shim tests: an HF-sampler engine (fast to start) and `ttt serve` servers on it or on the
session's real vLLM engine, plus the environment the official SDK needs to reach them."""

from __future__ import annotations

import os

import pytest

API_KEY = "tml-shim-test-key"
os.environ.setdefault("TINKER_TELEMETRY", "0")


@pytest.fixture(scope="session")
def hf_engine(tiny_model_path, tmp_path_factory):
    from inference.hf_sampler import HFSampler
    from shim.factory import make_engine

    return make_engine("tiny", sampler=HFSampler(tiny_model_path),
                       checkpoint_dir=str(tmp_path_factory.mktemp("ckpt-hf")))


def _serve(engine):
    from shim.server import start_server

    server, thread = start_server(engine, API_KEY, long_poll_s=5.0)
    return server


@pytest.fixture(scope="session")
def hf_server(hf_engine):
    """`ttt serve` over the HF engine, in a background thread of this process."""
    server = _serve(hf_engine)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def vllm_engine(vllm_sampler, tmp_path_factory):
    from shim.factory import make_engine

    return make_engine("tiny", sampler=vllm_sampler, checkpoint_dir=str(tmp_path_factory.mktemp("ckpt-vllm")))


@pytest.fixture(scope="session")
def vllm_server(vllm_engine):
    server = _serve(vllm_engine)
    yield server
    server.shutdown()
    server.server_close()


def sdk_client(server):
    """The unmodified official SDK pointed at `server`."""
    import tinker

    return tinker.ServiceClient(base_url=server.url, api_key=API_KEY)
