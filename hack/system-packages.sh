#!/usr/bin/env bash
# Installs the Debian packages the build and the local cluster need, when missing: protoc (generated code),
# iptables and ip (the data plane's redirection tests, `make demo` and the end-to-end suite).
set -euo pipefail
missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v iptables >/dev/null || missing+=(iptables)
command -v ip >/dev/null || missing+=(iproute2)
((${#missing[@]})) || exit 0
if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
  echo "Missing packages: ${missing[*]}. Install them (Debian: sudo apt-get install -y ${missing[*]}) and try again." >&2
  exit 1
fi
echo "Installing ${missing[*]} (apt-get)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
