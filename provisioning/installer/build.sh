#!/bin/sh
# Builds netmigrate's installer: a Debian kernel and an initramfs holding busybox and
# OpenSSH's sshd (this machine's, with the libraries it needs). Booted by iPXE from the
# appliance, it takes an address by DHCP, lets the appliance's key in as root, generates its
# SSH host key and calls the appliance back with its one-time token and that key. It leaves
# nothing behind: it runs from memory. Booted with nm_mode=commission, it reports the
# machine's hardware instead (CPUs, memory, disks, NICs, firmware, from /proc and /sys) and
# boots again. Booted with nm_mode=deploy, it writes a host image to the machine's disk
# (deploy.sh), checked against its SHA-256, with the host's own config beside it
# (config-area.sh), and reboots into it.
#
# usage: build.sh OUT_DIR KERNEL MODULES_DIR
#   KERNEL       a Debian vmlinuz
#   MODULES_DIR  its /lib/modules/VERSION (the NIC drivers are taken from there)
# writes OUT_DIR/vmlinuz and OUT_DIR/initrd.img
set -eu
OUT=$1 KERNEL=$2 MODS=$3
for t in /bin/busybox /usr/sbin/sshd /usr/bin/ssh-keygen cpio gzip; do
  command -v "$t" >/dev/null || { echo "build.sh: $t is missing (busybox-static, openssh-server, cpio)" >&2; exit 1; }
done
R=$(mktemp -d); trap 'rm -rf "$R"' EXIT
mkdir -p "$R/bin" "$R/sbin" "$R/usr/bin" "$R/usr/sbin" "$R/etc/ssh" "$R/root/.ssh" "$R/proc" "$R/sys" \
  "$R/dev" "$R/tmp" "$R/run/sshd" "$R/var/log" "$R/var/empty" "$R/lib/modules" "$R/usr/share/udhcpc"
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
# sshd and ssh-keygen with their libraries and loader.
for b in /usr/sbin/sshd /usr/bin/ssh-keygen; do
  cp "$b" "$R$b"
  for l in $(ldd "$b" | awk '/=>/ {print $3} $1 ~ /^\// {print $1}'); do
    mkdir -p "$R$(dirname "$l")"; cp -L "$l" "$R$l"
  done
done
for m in virtio/virtio_ring virtio/virtio virtio/virtio_pci_modern_dev virtio/virtio_pci_legacy_dev \
         virtio/virtio_pci ../net/core/failover net/net_failover net/virtio_net net/ethernet/intel/e1000/e1000 \
         block/virtio_blk; do
  f="$MODS/kernel/drivers/$m.ko"; [ -f "$f" ] && cp "$f" "$R/lib/modules/"
done
cat > "$R/etc/passwd" <<P
root:x:0:0:root:/root:/bin/sh
sshd:x:100:65534::/run/sshd:/bin/false
P
printf 'root:*:19000:0:99999:7:::\n' > "$R/etc/shadow"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$R/etc/group"
cat > "$R/etc/ssh/sshd_config" <<C
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AuthorizedKeysFile .ssh/authorized_keys
C
cat > "$R/usr/share/udhcpc/default.script" <<'S'
#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev $interface; ip link set $interface up;;
  bound|renew) ip addr flush dev $interface; ip addr add $ip/${mask:-24} dev $interface
     [ -n "$router" ] && ip route replace default via ${router%% *}
     echo "NM-INSTALLER: address $ip" > /dev/console;;
esac
S
cat > "$R/init" <<'I'
#!/bin/busybox sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts; mount -t devpts devpts /dev/pts
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net e1000 virtio_blk; do
  insmod /lib/modules/$m.ko 2>/dev/null; done
say() { echo "NM-INSTALLER: $*" > /dev/console; }
NAME=host; TOKEN=; CB=; KEY=; MODE=install
IMAGE=; SIZE=; SHA256=; DISK=; IP=; GW=; DNS=; DOMAIN=; BRIDGE=
for w in $(cat /proc/cmdline); do case "$w" in
  nm_name=*) NAME=${w#nm_name=};; nm_token=*) TOKEN=${w#nm_token=};;
  nm_callback=*) CB=${w#nm_callback=};; nm_key=*) KEY=${w#nm_key=};; nm_mode=*) MODE=${w#nm_mode=};;
  nm_image=*) IMAGE=${w#nm_image=};; nm_size=*) SIZE=${w#nm_size=};; nm_sha256=*) SHA256=${w#nm_sha256=};;
  nm_disk=*) DISK=${w#nm_disk=};; nm_ip=*) IP=${w#nm_ip=};; nm_gw=*) GW=${w#nm_gw=};;
  nm_dns=*) DNS=${w#nm_dns=};; nm_domain=*) DOMAIN=${w#nm_domain=};; nm_bridge=*) BRIDGE=${w#nm_bridge=};; esac; done
hostname "$NAME"
ip link set lo up
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do usleep 100000; i=$((i+1)); done
ip link set eth0 up
udhcpc -i eth0 -b -t 60 -T 1 -p /run/udhcpc.pid -s /usr/share/udhcpc/default.script -x hostname:"$NAME"
i=0; until ip -4 -o addr show eth0 | grep -q inet || [ $i -ge 600 ]; do usleep 100000; i=$((i+1)); done
# call_back WORD BODY: POSTs the JSON BODY to the appliance and says WORD and its answer. A
# refusal (4xx: a used, unknown or expired token) is final; a network error is tried again.
call_back() {
  n=0; while [ $n -lt 30 ]; do
    if wget -q -O /tmp/answer --header 'Content-Type: application/json' \
         --post-data "$2" "$CB" 2>/tmp/wget.err; then
      say "$1 $(cat /tmp/answer)"; return 0; fi
    grep -q ' 40[0-9]' /tmp/wget.err && { say "REFUSED $(cat /tmp/wget.err)"; return 1; }
    n=$((n+1)); sleep 2; done
  return 1
}
if [ "$MODE" = commission ]; then
  . /etc/nm/hardware.sh
  hardware > /tmp/hardware.json
  say "hardware $(cat /tmp/hardware.json)"
  # Reported or not, it boots again: the appliance decides what comes next when it asks
  # for its script.
  call_back COMMISSIONED "{\"token\":\"$TOKEN\",\"hardware\":$(cat /tmp/hardware.json)}"
  sync; sleep 1; reboot -f
fi
if [ "$MODE" = deploy ]; then
  . /etc/nm/config-area.sh
  . /etc/nm/deploy.sh
  deploy
fi
echo "$KEY" | tr ',' ' ' > /root/.ssh/authorized_keys; chmod 700 /root/.ssh; chmod 600 /root/.ssh/authorized_keys
ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
/usr/sbin/sshd -E /var/log/sshd.log
HK=$(cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub)
# Without sshd the appliance could not reach the host: no call back, say why instead.
if [ -z "$HK" ] || ! pidof sshd >/dev/null; then
  say "FAILED: sshd did not start: $(cat /var/log/sshd.log 2>/dev/null)"; exec setsid cttyhack sh; fi
say "sshd up as $NAME, calling back $CB"
call_back ENROLLED "{\"token\":\"$TOKEN\",\"host_key\":\"$HK\"}"
exec setsid cttyhack sh
I
mkdir -p "$R/etc/nm"
for f in hardware.sh deploy.sh config-area.sh; do cp "$(dirname "$0")/$f" "$R/etc/nm/$f"; done
chmod +x "$R/init" "$R/usr/share/udhcpc/default.script"
mkdir -p "$OUT"
cp "$KERNEL" "$OUT/vmlinuz.part" && mv "$OUT/vmlinuz.part" "$OUT/vmlinuz"
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT/initrd.img.part"
mv "$OUT/initrd.img.part" "$OUT/initrd.img"
echo "installer: $OUT/vmlinuz, $OUT/initrd.img ($(du -k "$OUT/initrd.img" | cut -f1) KiB)"
