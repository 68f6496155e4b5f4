#!/usr/bin/env bash
# Install the Debian tools the verifier sandbox uses (envs/sandbox/), if missing. Idempotent.
#   bubblewrap  -> bwrap: namespaces, read-only system, private tmpfs, die-with-parent
#   util-linux  -> prlimit (resource limits) and setpriv (unprivileged uid, pdeathsig)
#   libseccomp2 -> the seccomp filter (compiled through the pyseccomp wheel, pinned in requirements)
# Without root (or apt-get) it only reports what is missing: the sandbox then runs with the protections
# that are left and logs once which ones are off.
set -u

missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
{ command -v prlimit >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1; } || missing+=(util-linux)
ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2' || missing+=(libseccomp2)

if [ ${#missing[@]} -eq 0 ]; then
    echo "sandbox tools: bwrap, prlimit, setpriv and libseccomp present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "sandbox tools: missing ${missing[*]} (need root and apt-get to install); the sandbox will run with fewer protections"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        echo "sandbox tools: FAILED to install ${missing[*]}" >&2
        exit 1
    fi
fi
echo "sandbox tools: installed ${missing[*]}"
