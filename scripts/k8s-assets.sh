#!/usr/bin/env bash
# Prepare a KUBEBUILDER_ASSETS-style directory (etcd, kube-apiserver, kube-controller-manager)
# for the envtest-style cluster tests (tests/k8s_cluster.py), plus the node binaries (kubelet,
# kube-scheduler, kube-proxy) that the e2e tests' one-node cluster adds (tests/e2e/).
#
# Usage: scripts/k8s-assets.sh [OUT_DIR]        (default: <repo>/.k8s-assets)
# Env:   K8S_SHARED_DIR  where the prebuilt .xz binaries and SHA256SUMS live
#                        (default: <repo>/../shared/k8s)
#
# Idempotent: binaries already present with the expected checksum are left alone.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_dir="${1:-$repo_root/.k8s-assets}"
shared_dir="${K8S_SHARED_DIR:-$repo_root/../shared/k8s}"
version="v1.20.2"

die() {
  echo "k8s-assets: error: $*" >&2
  exit 1
}

mkdir -p "$out_dir" || die "cannot create $out_dir"

# --- etcd: Debian's etcd-server (no registry ships an etcd binary we could pin instead).
if [[ -x "$out_dir/etcd" ]]; then
  echo "k8s-assets: etcd already in $out_dir"
else
  if ! command -v etcd >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 \
      || die "etcd is not on PATH and apt-get is unavailable; install etcd (3.4+) and rerun"
    echo "k8s-assets: etcd not on PATH; installing Debian's etcd-server"
    sudo_cmd=()
    if [[ "$(id -u)" != 0 ]]; then
      command -v sudo >/dev/null 2>&1 || die "installing etcd-server needs root (or sudo)"
      sudo_cmd=(sudo)
    fi
    "${sudo_cmd[@]}" apt-get update \
      && DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y etcd-server \
      || die "apt-get install etcd-server failed"
  fi
  etcd_path="$(command -v etcd)" || die "etcd still not on PATH after installing etcd-server"
  # A symlink keeps the distribution's binary (and its updates) authoritative.
  ln -sf "$etcd_path" "$out_dir/etcd"
  echo "k8s-assets: linked $out_dir/etcd -> $etcd_path"
fi

# --- The control plane and the node: prebuilt .xz files checked against SHA256SUMS.
[[ -d "$shared_dir" ]] || die "shared binaries directory not found: $shared_dir (set K8S_SHARED_DIR)"
[[ -f "$shared_dir/SHA256SUMS" ]] || die "missing $shared_dir/SHA256SUMS"
command -v xz >/dev/null 2>&1 || die "xz is required to unpack the binaries (apt-get install xz-utils)"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum is required (coreutils)"

for name in kube-apiserver kube-controller-manager kubelet kube-scheduler kube-proxy; do
  xz_file="$name-$version-linux-amd64.xz"
  stamp="$out_dir/.$name.sha256"
  expected="$(awk -v f="$xz_file" '$2 == f || $2 == "*" f {print $1}' "$shared_dir/SHA256SUMS")"
  [[ -n "$expected" ]] || die "$xz_file is not listed in $shared_dir/SHA256SUMS"

  # The stamp records which archive the unpacked binary came from, so a changed archive
  # (new SHA256SUMS) triggers a re-unpack while an unchanged one costs nothing.
  if [[ -x "$out_dir/$name" && -f "$stamp" && "$(cat "$stamp")" == "$expected" ]]; then
    echo "k8s-assets: $name already unpacked"
    continue
  fi
  [[ -f "$shared_dir/$xz_file" ]] || die "missing $shared_dir/$xz_file"
  actual="$(sha256sum "$shared_dir/$xz_file" | awk '{print $1}')"
  [[ "$actual" == "$expected" ]] \
    || die "checksum mismatch for $xz_file: expected $expected, got $actual"

  # Unpack to a temp name first so an interrupted run never leaves a truncated binary.
  tmp="$out_dir/.$name.tmp.$$"
  xz -dc "$shared_dir/$xz_file" >"$tmp" || { rm -f "$tmp"; die "unpacking $xz_file failed"; }
  chmod +x "$tmp"
  mv -f "$tmp" "$out_dir/$name"
  echo "$expected" >"$stamp"
  echo "k8s-assets: unpacked $name into $out_dir"
done

echo "k8s-assets: ready; run the cluster tests with KUBEBUILDER_ASSETS=$out_dir (or leave it unset)"
