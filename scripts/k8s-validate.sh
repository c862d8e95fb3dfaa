#!/usr/bin/env bash
# The Kubernetes schema validator of tests/kubernetes.rs: kubernetes-validate from PyPI, which
# ships the JSON schemas of Kubernetes 1.25-1.37 and then needs no network, in a venv under the
# h2k-guest cache (~/.cache/h2k-guest/venv/, H2K_CACHE_DIR moves it), pinned by
# scripts/k8s-validate-requirements.txt (a new pin makes a new venv).
#
#   scripts/k8s-validate.sh --install    create the venv unless it is there (setup.sh runs this)
#   scripts/k8s-validate.sh ARGS...      kubernetes-validate ARGS (installing first if needed),
#                                        e.g. --strict -k 1.29 deploy/kubernetes/base/job.yaml
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
req=$here/k8s-validate-requirements.txt
cache=${H2K_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/h2k-guest}
venv=$cache/venv/kubernetes-validate-$(sha256sum "$req" | cut -c1-12)

install() {
    [ -e "$venv/.complete" ] && return 0
    mkdir -p "$cache/venv"
    exec 9>"$cache/venv/.lock"
    flock 9
    if [ ! -e "$venv/.complete" ]; then
        # Debian's python3 (python3-venv from setup.sh), else whichever python3 is first.
        local py=/usr/bin/python3
        [ -x "$py" ] || py=$(command -v python3)
        rm -rf "$venv"
        "$py" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$req"
        touch "$venv/.complete"
    fi
    exec 9>&-
}

if [ "${1:-}" = --install ]; then
    install
    echo "k8s-validate.sh: $("$venv/bin/python" -m kubernetes_validate --version) in $venv"
    exit 0
fi
install
exec "$venv/bin/python" -m kubernetes_validate "$@"
