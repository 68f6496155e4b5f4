"""`serve_main` as `ttt serve` runs it, in its own process: binds to 127.0.0.1, prints a generated key, answers
that key and refuses others with 401."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _post(url, key):
    req = urllib.request.Request(url, data=b"{}", method="POST", headers={"X-API-Key": key})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_serve_main_generates_and_enforces_a_key(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("TTT_SERVE_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from shim.server import serve_main; "
                             "sys.exit(serve_main(sys.argv[1:]))", "--model", "tiny", "--sampler", "hf",
                             "--port", "0", "--checkpoint-dir", str(tmp_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "TINKER_API_KEY=" in line:
                break
        text = "".join(lines)
        url = re.search(r"TINKER_BASE_URL=(http://127\.0\.0\.1:\d+)", text).group(1)
        key = re.search(r"TINKER_API_KEY=(tml-\S+)", text).group(1)
        assert _post(f"{url}/api/v1/create_session", "tml-guess")[0] == 401
        status, body = _post(f"{url}/api/v1/create_session", key)
        assert status == 200 and body["session_id"]
    finally:
        proc.terminate()
        proc.wait(30)
