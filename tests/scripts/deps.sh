#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks for the build, the lab and the tests.
# Idempotent and quick when everything is already there (one dpkg query, no apt-get update).
set -euo pipefail

CACHE=${NETMIGRATE_LAB_CACHE:-/var/cache/netmigrate-lab}

# Debian packages: the lab (namespaces, OVS, QEMU, sshd) and the real clients the tests drive.
PKGS=(
  qemu-system-x86 openvswitch-switch openvswitch-common busybox-static cpio iproute2
  iputils-ping arping tcpdump openssh-server openssh-client curl lftp python3 procps psmisc
  vsftpd iperf3 isc-dhcp-client kea-dhcp4-server kea-admin dnsmasq-base isc-dhcp-relay
  dhcpcd-base ipxe-qemu bind9-dnsutils knot dnsperf libnftables1 chromium
  debootstrap kmod zstd xz-utils tftp-hpa nftables
  qemu-utils grub-pc-bin grub-efi-amd64-bin grub-common xorriso mtools e2fsprogs openipmi ipmitool ovmf ipxe
)

missing_pkgs() {
  missing=()
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
}
missing_pkgs

if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing packages: ${missing[*]} (run 'make deps' as root)" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  # Package installs must not start daemons (ovs, sshd) in the root namespace.
  policy=/usr/sbin/policy-rc.d
  had_policy=0; [ -e "$policy" ] && had_policy=1
  if [ "$had_policy" = 0 ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # An install can remove what was there: Debian's qemu-system-x86 takes away a backported
  # qemu-utils of another version. What went is installed again, at the versions that fit.
  missing_pkgs
  if ((${#missing[@]})); then
    echo "deps: installing again what the first install removed: ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    missing_pkgs
    ((${#missing[@]} == 0)) || { echo "deps: still missing: ${missing[*]}" >&2; exit 1; }
  fi
fi

# Guest kernel for the lab's QEMU guests: Debian's current 6.1 image, unpacked into the cache.
if [ ! -e "$CACHE/kernel/vmlinuz" ]; then
  mkdir -p "$CACHE/kernel"
  if ! pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}') || [ -z "$pkg" ]; then
    apt-get update -qq
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
  fi
  echo "deps: fetching guest kernel $pkg into $CACHE/kernel"
  tmp=$(mktemp -d); chmod 755 "$tmp"  # apt downloads as _apt
  (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null && dpkg-deb -x ./*.deb root)
  kver=${pkg#linux-image-}
  rm -rf "$CACHE/kernel/root"
  mv "$tmp/root" "$CACHE/kernel/root"
  ln -sf "root/boot/vmlinuz-$kver" "$CACHE/kernel/vmlinuz"
  echo "$kver" >"$CACHE/kernel/version"
  rm -rf "$tmp"
fi

# Cargo components used by `make test`.
if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi
# Cargo tools used by `make test`: pinned, so a new release cannot change what CI checks.
for tool in cargo-deny@0.20.2 cargo-fuzz@0.13.2; do
  bin=${tool%@*}
  if ! command -v "$bin" >/dev/null 2>&1 || ! "$bin" "${bin#cargo-}" --version 2>/dev/null | grep -q "${tool#*@}"; then
    echo "deps: installing $tool"
    cargo install --locked --quiet "$bin" --version "${tool#*@}"
  fi
done
echo "deps: ok (guest kernel $(cat "$CACHE/kernel/version"))"
