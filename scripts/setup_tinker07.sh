#!/usr/bin/env bash
# A separate virtualenv with the official Tinker SDK 0.7.0 (the version the TTT-Discover repo pins), so tests can
# check that `ttt serve` still speaks its all-JSON wire protocol. Idempotent: a working venv is kept as is.
# It lives under .cache/ (git-ignored). SDK 0.7.0 imports torch at module level and declares torch+transformers
# as dependencies (a 5 GB CUDA download), so by default the SDK is installed without dependencies and the
# project venv's site-packages is appended to its path (a .pth file): torch, numpy, httpx, pydantic, ... come
# from there, while the venv's own tinker 0.7.0 shadows the project's 0.38 because site-packages comes first.
# TINKER07_FULL=1 installs the SDK with all its declared dependencies instead.
# Usage: scripts/setup_tinker07.sh [VENV_DIR]   (prints the venv's python path on success)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.cache/venv-tinker07}"
PY="$VENV/bin/python"
PROJECT_SITE="$(pwd)/.venv/lib/python3.11/site-packages"
check() { "$PY" -c 'import tinker, sys; sys.exit(tinker.__version__ != "0.7.0")' 2>/dev/null; }
if [ -x "$PY" ] && check; then
  echo "$PY"
  exit 0
fi
rm -rf "$VENV"
"${TINKER07_BASE_PYTHON:-python3}" -m venv "$VENV"
if [ "${TINKER07_FULL:-0}" = "1" ]; then
  "$PY" -m pip install --quiet --disable-pip-version-check "tinker==0.7.0" >&2
else
  [ -d "$PROJECT_SITE" ] || { echo "setup_tinker07: $PROJECT_SITE missing (run scripts/setup.sh first)" >&2; exit 1; }
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps "tinker==0.7.0" >&2
  SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$PROJECT_SITE" > "$SITE/zz_project_venv.pth"
fi
check || { echo "setup_tinker07: tinker 0.7.0 does not import in $VENV" >&2; exit 1; }
echo "$PY"
