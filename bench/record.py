"""Record a bench's result in BENCHMARKS.md: its section is replaced between `<!-- KEY:begin -->` and
`<!-- KEY:end -->` (or appended under TITLE when new), headed by the command that produced it, the commit, the
date and the machine, so every figure there says where it came from."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"


def commit() -> str:
    """The checkout's commit (short); when tracked files differ from it, "-dirty-" and a hash of the difference,
    so that two dirty trees are told apart."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    diff = git("diff", "HEAD")
    return head + (f"-dirty-{hashlib.sha1(diff.encode()).hexdigest()[:8]}" if diff else "")


def machine() -> str:
    """CPU model and count (and the GPU, if torch sees one)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{model}, {os.cpu_count()} CPUs"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    except ImportError:
        pass
    return text


def header(command: str) -> str:
    return f"Command: `{command}` (commit {commit()}, {time.strftime('%Y-%m-%d %H:%M %Z')}; {machine()})."


def record(key: str, title: str, command: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace (or append) the section `key` of BENCHMARKS.md with the command header and `body`."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    block = f"{begin}\n{header(command)}\n\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n## {title}\n\n{block}\n"
    path.write_text(text)
