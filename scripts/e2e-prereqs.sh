#!/usr/bin/env bash
# Install the Debian packages the e2e tests' one-node cluster needs (tests/e2e/node_cluster.py)
# when any is missing, and unpack the Kubernetes binaries (scripts/k8s-assets.sh).
# Needs root (or sudo) and apt-get; does nothing when everything is there.
# Packages' services are not started: the cluster runs a dockerd of its own.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# command-or-file:package
needs=(
  dockerd:docker.io /usr/bin/docker:docker.io /usr/sbin/runc:runc debootstrap:debootstrap
  iptables:iptables conntrack:conntrack dnsmasq:dnsmasq-base etcd:etcd-server jq:jq
  xz:xz-utils gcc:gcc /usr/lib/x86_64-linux-gnu/libc.a:libc6-dev
)
missing=()
for need in "${needs[@]}"; do
  what="${need%%:*}" package="${need#*:}"
  if [[ "$what" == /* ]]; then [[ -e "$what" ]] && continue
  else command -v "$what" >/dev/null 2>&1 && continue; fi
  [[ " ${missing[*]} " == *" $package "* ]] || missing+=("$package")
done

if ((${#missing[@]})); then
  command -v apt-get >/dev/null 2>&1 || {
    echo "e2e-prereqs: error: missing ${missing[*]} and apt-get is unavailable" >&2
    exit 1
  }
  sudo_cmd=()
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "e2e-prereqs: error: installing ${missing[*]} needs root (or sudo)" >&2
      exit 1
    }
    sudo_cmd=(sudo)
  fi
  echo "e2e-prereqs: installing ${missing[*]}"
  # A policy-rc.d refusing every start keeps docker.io's postinst from starting a system
  # dockerd, which would take docker0 from the cluster's own.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee "$policy" >/dev/null
    "${sudo_cmd[@]}" chmod +x "$policy"
    own_policy=1
  fi
  status=0
  "${sudo_cmd[@]}" apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq \
      --no-install-recommends "${missing[@]}" >/dev/null \
    || status=$?
  ((own_policy)) && "${sudo_cmd[@]}" rm -f "$policy"
  ((status == 0)) || { echo "e2e-prereqs: error: apt-get install failed ($status)" >&2; exit 1; }
fi

exec "$repo/scripts/k8s-assets.sh"
