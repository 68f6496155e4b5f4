"""`ttt serve` as its own process (what `ttt serve ...` runs), on a free loopback port, for tests that stop and
restart it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class ServeProcess:
    def __init__(self, checkpoint_dir, *args: str, api_key: str | None = None):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TINKER_TELEMETRY": "0"}
        env.pop("TTT_SERVE_API_KEY", None)
        cmd = [sys.executable, "-c", "import sys; from shim.server import serve_main; sys.exit(serve_main(sys.argv[1:]))",
               "--model", "tiny", "--sampler", "hf", "--port", "0", "--checkpoint-dir", str(checkpoint_dir),
               "--log-level", "WARNING", "--access-log", "off", *args]
        if api_key:
            cmd += ["--api-key", api_key]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.url, self.lines = None, []
        for line in self.proc.stdout:
            self.lines.append(line)
            if "listening on " in line:
                self.url = line.split("listening on ", 1)[1].strip()
                break
        if self.url is None:
            self.stop()
            raise RuntimeError("ttt serve exited before listening:\n" + "".join(self.lines)[-3000:])
        threading.Thread(target=self._drain, daemon=True).start()  # a full pipe must never block the server

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: uvicorn's graceful shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
