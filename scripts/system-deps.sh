#!/usr/bin/env bash
# The Debian packages the test suite runs as real programs, installed when missing:
#   haproxy   the load balancer in front of three replicas (tests/cluster, docs/deploy/haproxy.cfg)
# Run by `make test` (and so by CI) before the suite. Needs root or sudo and apt-get; anything else
# gets a message that says what to install by hand.
set -euo pipefail

missing=()
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "The tests need these programs, and this machine has no apt-get to install them: ${missing[*]}" >&2
    echo "Install them with your package manager, then run make test again." >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
        echo "The tests need ${missing[*]}; run as root, or: apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
fi
echo "installing ${missing[*]} (Debian packages the tests run)" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    $sudo apt-get update -qq >/dev/null
    $sudo apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
}
