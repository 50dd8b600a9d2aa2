#!/bin/bash
# Builds a deployable host image from Debian's packages, for netmigrate's installer to write
# to a machine's disk:
#   xen   the Xen hypervisor and a Debian dom0 kernel, xl at the hypervisor's exact version,
#         Open vSwitch, sshd, zstd, curl
#   qemu  a Debian kernel with KVM, qemu-system-x86 and qemu-utils, Open vSwitch, sshd, zstd, curl
# The host's root lives in RAM (its initramfs, brought up by rc.sh beside this script); the
# image is a hybrid ISO from grub-mkrescue, which BIOS and UEFI firmware boot as a plain disk
# (GRUB, with Xen's multiboot2 for the xen profile). What is each host's own (address, keys,
# first boot's token) the installer writes into the disk's last MiB; rc.sh reads it.
#
# usage: build.sh PROFILE OUT_DIR
# writes OUT_DIR/host.img, host.img.sha256 ("HEX  host.img"), vmlinuz, initrd.img, xen.gz
# (xen), VERSIONS; the unpacked root is kept in WORK between builds, keyed by the packages'
# versions.
# Env: WORK (default /var/cache/netmigrate-host-image), MIRROR (default: apt's),
#      XEN_ARGS (Xen's command line beyond dom0 memory and console; the nested lab adds smap=0),
#      DOM0_MEM (default 1024M)
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin
PROFILE=${1:-} OUT=${2:-}
case "$PROFILE" in xen|qemu) ;; *) echo "usage: build.sh xen|qemu OUT_DIR" >&2; exit 2;; esac
[ -n "$OUT" ] || { echo "usage: build.sh xen|qemu OUT_DIR" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-/var/cache/netmigrate-host-image}
XEN_ARGS=${XEN_ARGS:-} DOM0_MEM=${DOM0_MEM:-1024M}
log() { echo "[host-image $PROFILE $(date +%T)] $*" >&2; }
for t in debootstrap grub-mkrescue xorriso mformat zstd cpio depmod sha256sum; do
  command -v $t >/dev/null || { echo "build.sh: $t is missing (make deps)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "build.sh: debootstrap and chroot need root" >&2; exit 1; }

apt_mirror() {
  { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | sed -E 's/^deb (\[[^]]*\] )?//' | awk '{print $1}'
  } | grep -v -- '-security' | head -1 || true
}
MIRROR=${MIRROR:-$(apt_mirror)}
[ -n "$MIRROR" ] || { echo "no Debian mirror in apt's sources; set MIRROR" >&2; exit 1; }
policy() { apt-cache policy "$1" | awk '/Candidate/{print $2}'; }
KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$KPKG" ] || { apt-get update -qq; KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}'); }
KVER=${KPKG#linux-image-}
OVSVER=$(policy openvswitch-switch)
if [ "$PROFILE" = xen ]; then
  XENVER=$(policy xen-hypervisor-4.17-amd64)
  PKGS="xen-utils-4.17=$XENVER xen-utils-common=$XENVER xenstore-utils"
  VERSIONS="Xen $XENVER, kernel $KVER, Open vSwitch $OVSVER"
else
  QEMUVER=$(policy qemu-system-x86)
  PKGS="qemu-system-x86=$QEMUVER qemu-utils=$QEMUVER"
  VERSIONS="QEMU $QEMUVER, kernel $KVER, Open vSwitch $OVSVER"
fi
case "$VERSIONS" in *"(none)"*|*" ,"*) echo "apt knows no candidate: $VERSIONS" >&2; exit 1;; esac
PKGKEY=$(echo "$PROFILE $VERSIONS" | sha256sum | cut -c1-12)
ROOT=$WORK/$PROFILE-root-$PKGKEY
KROOT=$WORK/kernel-$KVER
mkdir -p "$WORK" "$OUT"
log "$VERSIONS"

# ---- the root: debootstrap, then the profile's packages --------------------------------
if [ ! -f "$ROOT/.packages" ]; then
  log "debootstrap into $ROOT (minutes)"
  rm -rf "$ROOT"
  debootstrap --variant=minbase \
    --include=openssh-server,openssh-client,iproute2,busybox,kmod,procps,iputils-ping,netcat-openbsd,curl,ca-certificates,openssl,ethtool,zstd \
    bookworm "$ROOT" "$MIRROR" > "$WORK/$PROFILE-debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/$PROFILE-debootstrap.log" >&2; exit 1; }
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s-security bookworm-security main\n' \
    "$MIRROR" "$MIRROR" "$MIRROR" > "$ROOT/etc/apt/sources.list"
  printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"; chmod +x "$ROOT/usr/sbin/policy-rc.d"
  chroot "$ROOT" apt-get -q update > "$WORK/$PROFILE-apt.log" 2>&1
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive chroot "$ROOT" apt-get -q install -y --no-install-recommends \
    "openvswitch-switch=$OVSVER" $PKGS >> "$WORK/$PROFILE-apt.log" 2>&1 \
    || { tail -20 "$WORK/$PROFILE-apt.log" >&2; exit 1; }
  if [ "$PROFILE" = xen ]; then
    got=$(chroot "$ROOT" dpkg-query -W -f='${Version}' xen-utils-4.17)
    [ "$got" = "$XENVER" ] || { echo "xen-utils $got is not the hypervisor's $XENVER" >&2; exit 1; }
  fi
  chroot "$ROOT" apt-get clean
  rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* \
    "$ROOT"/usr/share/locale/* "$ROOT"/usr/share/info/*
  touch "$ROOT/.packages"
fi

# ---- the kernel, the hypervisor ---------------------------------------------------------
if [ ! -f "$KROOT/.done" ]; then
  log "kernel $KVER"
  rm -rf "$KROOT"; mkdir -p "$KROOT"
  (cd "$KROOT" && apt-get -o APT::Sandbox::User=root -q download "$KPKG" >&2 && dpkg-deb -x "$KPKG"_*.deb . && rm -f ./*.deb)
  touch "$KROOT/.done"
fi
ISO=$(mktemp -d "$WORK/iso.XXXXXX"); trap 'rm -rf "$ISO"' EXIT
mkdir -p "$ISO/boot/grub"
cp "$KROOT/boot/vmlinuz-$KVER" "$ISO/boot/vmlinuz"
if [ "$PROFILE" = xen ]; then
  X=$(mktemp -d "$WORK/xen.XXXXXX")
  (cd "$X" && apt-get -o APT::Sandbox::User=root -q download "xen-hypervisor-4.17-amd64=$XENVER" >&2 \
     && dpkg-deb -x xen-hypervisor-4.17-amd64_*.deb x)
  cp "$X/x/boot/xen-4.17-amd64.gz" "$ISO/boot/xen.gz"; rm -rf "$X"
fi

# ---- modules: what a machine's disks, NICs, hypervisor and switch need -----------------
log "modules and configuration"
rm -rf "$ROOT/lib/modules"; M=$ROOT/lib/modules/$KVER; mkdir -p "$M"
KM=$KROOT/lib/modules/$KVER
# A server's storage, network devices (Ethernet, Xen's netback, tun, veth, bonds), USB
# keyboards and sticks, Xen's and KVM's, the network stack (Open vSwitch, netfilter), file
# systems a host uses; no graphics, sound, radio or media.
(cd "$KM"
 { for d in drivers/net drivers/block drivers/nvme drivers/ata drivers/scsi drivers/virtio \
     drivers/xen drivers/md drivers/char/ipmi drivers/usb/storage drivers/usb/host drivers/hid/usbhid \
     drivers/pci drivers/acpi net arch crypto lib virt fs/ext4 fs/jbd2 fs/fat fs/nls fs/isofs fs/xfs \
     fs/fuse; do
     if [ -d "kernel/$d" ]; then find "kernel/$d" -name '*.ko*'; fi
   done
   find kernel/drivers/hid kernel/fs -maxdepth 1 -name '*.ko*'
 } | grep -vE '^kernel/(net/(wireless|mac80211|bluetooth)|drivers/net/(wireless|wwan|can|ieee802154|hamradio|wan|usb))/' \
   | cpio -pdm --quiet "$M")
cp "$KM"/modules.{order,builtin,builtin.modinfo} "$M/"
depmod -b "$ROOT" "$KVER"
# What the bring-up loads by name must be there.
for m in xen-netback xen-blkback openvswitch tun sch_htb kvm-intel kvm-amd; do
  modprobe -d "$ROOT" -S "$KVER" -n "$m" 2>/dev/null || { echo "build.sh: module $m is missing from the image" >&2; exit 1; }
done

# ---- configuration: sshd, Xen's, init ---------------------------------------------------
rm -f "$ROOT"/etc/ssh/ssh_host_*
cat > "$ROOT/etc/ssh/sshd_config.d/netmigrate.conf" <<EOS
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
MaxStartups 50:30:100
MaxSessions 50
EOS
if [ "$PROFILE" = xen ]; then
  grep -q '^autoballoon="off"' "$ROOT/etc/xen/xl.conf" || echo 'autoballoon="off"' >> "$ROOT/etc/xen/xl.conf"
fi
mkdir -p "$ROOT/etc/nm"
echo "$PROFILE" > "$ROOT/etc/nm/profile"
echo "$VERSIONS" > "$ROOT/etc/nm/versions"
cp "$HERE/rc.sh" "$ROOT/etc/nm/rc.sh"; chmod +x "$ROOT/etc/nm/rc.sh"
cp "$HERE/../installer/config-area.sh" "$ROOT/etc/nm/config-area.sh"
printf '::sysinit:/etc/nm/rc.sh\n::ctrlaltdel:/sbin/reboot\n' > "$ROOT/etc/inittab"
# busybox's init is PID 1: its reboot, poweroff and halt (minbase has no init system's).
for c in reboot poweroff halt; do [ -e "$ROOT/sbin/$c" ] || ln -s /bin/busybox "$ROOT/sbin/$c"; done
printf '#!/bin/sh\nexec /bin/busybox init\n' > "$ROOT/init"; chmod +x "$ROOT/init"

log "initramfs"
(cd "$ROOT" && find . -path ./.packages -prune -o -print | cpio -o -H newc --quiet | zstd -q -T0 -10) > "$ISO/boot/initrd.img"

# ---- the image: GRUB for BIOS and UEFI --------------------------------------------------
{
  echo 'serial --unit=0 --speed=115200'
  echo 'terminal_input serial console'
  echo 'terminal_output serial console'
  echo 'set timeout=1'
  if [ "$PROFILE" = xen ]; then
    echo 'menuentry "netmigrate Xen host" {'
    echo "  multiboot2 /boot/xen.gz dom0_mem=$DOM0_MEM,max:$DOM0_MEM console=com1,vga com1=115200,8n1 $XEN_ARGS"
    echo '  module2 /boot/vmlinuz console=hvc0 earlyprintk=xen'
    echo '  module2 /boot/initrd.img'
  else
    echo 'menuentry "netmigrate QEMU/KVM host" {'
    echo '  linux /boot/vmlinuz console=tty0 console=ttyS0,115200'
    echo '  initrd /boot/initrd.img'
  fi
  echo '}'
} > "$ISO/boot/grub/grub.cfg"
log "grub-mkrescue"
grub-mkrescue -o "$OUT/host.img.part" "$ISO" > "$WORK/$PROFILE-grub.log" 2>&1 \
  || { cat "$WORK/$PROFILE-grub.log" >&2; exit 1; }
for f in vmlinuz initrd.img xen.gz; do
  [ -f "$ISO/boot/$f" ] && cp "$ISO/boot/$f" "$OUT/$f.part" && mv "$OUT/$f.part" "$OUT/$f"
done
mv "$OUT/host.img.part" "$OUT/host.img"
(cd "$OUT" && sha256sum host.img > host.img.sha256.part && mv host.img.sha256.part host.img.sha256)
echo "$VERSIONS" > "$OUT/VERSIONS"
log "$OUT/host.img: $(du -m "$OUT/host.img" | cut -f1) MiB, sha256 $(cut -c1-16 "$OUT/host.img.sha256")..."
