#!/usr/bin/env bash
# Install the Debian tools the verifier sandbox uses (envs/sandbox/), if missing, then report the isolation
# level this host keeps (envs/sandbox/isolation.py). Idempotent.
#   bubblewrap  -> bwrap: namespaces, read-only system, private sized tmpfs, die-with-parent
#   util-linux  -> prlimit (resource limits), setpriv (a uid of its own per evaluation, pdeathsig), taskset
#   libseccomp2 -> the seccomp filter (compiled through the pyseccomp wheel, pinned in requirements)
# Runs that execute generated programs need sandbox_isolation=strict by default: root, these tools and writable
# memory/pids cgroups. Without root (or apt-get) this only reports what is missing; such a host refuses
# program runs unless a weaker level is named (sandbox_isolation=namespaces or minimal, see the README).
set -u
cd "$(dirname "$0")/.."

missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
{ command -v prlimit >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1 && command -v taskset >/dev/null 2>&1; } \
    || missing+=(util-linux)
ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2' || missing+=(libseccomp2)

if [ ${#missing[@]} -eq 0 ]; then
    echo "sandbox tools: bwrap, prlimit, setpriv, taskset and libseccomp present"
elif [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "sandbox tools: missing ${missing[*]} (need root and apt-get to install)"
else
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1
        if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
            echo "sandbox tools: FAILED to install ${missing[*]}" >&2
            exit 1
        fi
    fi
    echo "sandbox tools: installed ${missing[*]}"
fi

# What this host keeps, found by trial (a tiny program through the whole stack), as a run would find it.
if [ -x .venv/bin/python ]; then
    .venv/bin/python - <<'PY'
from envs.sandbox import isolation
from envs.sandbox.detect import current_profile

profile = current_profile()
level = isolation.strongest(profile)
if level == "strict":
    print("sandbox: this host keeps sandbox_isolation=strict (the default)")
else:
    print(f"sandbox: this host keeps sandbox_isolation={level} only; runs of program tasks stop unless it is "
          f"named. {isolation.refusal(profile, 'strict')}")
PY
fi
