#!/bin/bash
# Builds the nested Xen hosts of the lab once, into a cache directory keyed by what goes in
# (hypervisor, kernel and Open vSwitch package versions, and this script), and prints that
# directory on its last line. Adapted from the shared lab recipe (../shared/lab/xen): Xen 4.17
# from Debian bookworm, a Debian dom0 that lives in its initramfs, plus Open vSwitch (kernel
# datapath) with the host's address on its bridge, as the QEMU lab hosts have it.
#   $DIR/xen.elf          hypervisor (plain multiboot ELF for QEMU -kernel)
#   $DIR/vmlinuz          Debian kernel (dom0 and the guests)
#   $DIR/dom0-initrd.img  dom0 root: xen-utils (the hypervisor's exact version), sshd, OVS
#   $DIR/domu-initrd.img  guest: busybox, httpd on :80, address from the kernel command line
#   $DIR/keys/            ctl_ed25519 (the appliance's key), host_ed25519 (every dom0's host key),
#                         inter_ed25519 (dom0 -> dom0, for xl migrate)
# Env: NETMIGRATE_LAB_CACHE (default /var/cache/netmigrate-lab), MIRROR (default: apt's).
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin
CACHE=${NETMIGRATE_LAB_CACHE:-/var/cache/netmigrate-lab}
log() { echo "[xen-build $(date +%T)] $*" >&2; }

apt_mirror() {
  { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | sed -E 's/^deb (\[[^]]*\] )?//' | awk '{print $1}'
  } | grep -v -- '-security' | head -1 || true
}
MIRROR=${MIRROR:-$(apt_mirror)}
[ -n "$MIRROR" ] || { echo "no Debian mirror in apt's sources; set MIRROR" >&2; exit 1; }

policy() { apt-cache policy "$1" | awk '/Candidate/{print $2}'; }
XENVER=$(policy xen-hypervisor-4.17-amd64)
if [ -z "$XENVER" ] || [ "$XENVER" = "(none)" ]; then apt-get update -qq; XENVER=$(policy xen-hypervisor-4.17-amd64); fi
KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
OVSVER=$(policy openvswitch-switch)
[ -n "$XENVER" ] && [ -n "$KPKG" ] && [ -n "$OVSVER" ] || { echo "apt knows no xen/kernel/openvswitch" >&2; exit 1; }
KVER=${KPKG#linux-image-}
KEY=$( { echo "$XENVER $KVER $OVSVER"; cat "$0"; } | sha256sum | cut -c1-16)
DIR=$CACHE/xen-$KEY
if [ -f "$DIR/.done" ]; then echo "$DIR"; exit 0; fi
log "building into $DIR: Xen $XENVER, kernel $KVER, OVS $OVSVER"
mkdir -p "$DIR"/{debs,keys,logs}
cd "$DIR/debs"
ls xen-hypervisor-4.17-amd64_*.deb >/dev/null 2>&1 || apt-get -o APT::Sandbox::User=root -q download "xen-hypervisor-4.17-amd64=$XENVER" >&2
ls "${KPKG}"_*.deb >/dev/null 2>&1 || apt-get -o APT::Sandbox::User=root -q download "$KPKG" >&2

if [ ! -s "$DIR/xen.elf" ]; then
  rm -rf "$DIR/x"; dpkg-deb -x xen-hypervisor-4.17-amd64_*.deb "$DIR/x"
  zcat "$DIR/x/boot/xen-4.17-amd64.gz" > "$DIR/xen.elf.new" && mv "$DIR/xen.elf.new" "$DIR/xen.elf"
  rm -rf "$DIR/x"
fi
KROOT=$DIR/kroot
if [ ! -s "$DIR/vmlinuz" ]; then
  rm -rf "$KROOT"; dpkg-deb -x "${KPKG}"_*.deb "$KROOT"
  depmod -b "$KROOT" "$KVER"
  cp "$KROOT/boot/vmlinuz-$KVER" "$DIR/vmlinuz"
fi
modpaths() { for m in "$@"; do modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" | awk '/^insmod/{print $2}'; done | awk '!s[$0]++'; }

cd "$DIR/keys"
for k in ctl host inter; do [ -f ${k}_ed25519 ] || ssh-keygen -q -t ed25519 -N '' -C "netmigrate-xenlab-$k" -f ${k}_ed25519; done

# ---- the guest: busybox, xen-netfront, xen-blkfront and ext4, httpd --------------------
if [ ! -s "$DIR/domu-initrd.img" ]; then
  log "guest initramfs"
  R=$DIR/domu-root; rm -rf "$R"; mkdir -p "$R"/{bin,proc,sys,dev,www,lib/modules,tmp}
  cp /bin/busybox "$R/bin/busybox"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
  # Loaded in this order, each after what it needs (crc32c is ext4's soft dependency).
  for p in $(modpaths xen-netfront xen-blkfront crc32c_generic ext4); do
    cp "$p" "$R/lib/modules/"; basename "$p" >> "$R/lib/modules/order"; done
  cat > "$R/init" <<'EOS'
#!/bin/busybox sh
# guest: address from nm_ip= on the kernel command line, httpd on :80 saying who it is
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m 2>/dev/null; done
IP=; GW=; NAME=web; DISK=
for w in $(cat /proc/cmdline); do case "$w" in
  nm_ip=*) IP=${w#nm_ip=};; nm_gw=*) GW=${w#nm_gw=};; nm_name=*) NAME=${w#nm_name=};;
  nm_disk=*) DISK=${w#nm_disk=};; esac; done
hostname $NAME; ip link set lo up
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do usleep 100000; i=$((i+1)); done
ip link set eth0 up
[ -n "$IP" ] && ip addr add $IP dev eth0
[ -n "$GW" ] && ip route add default via $GW
echo "hello from $NAME" > /www/index.html
# A disk to write to (nm_disk=DEV, ext4), as the QEMU lab guest has it: a sequence number
# appended to /data/seq every 200 ms, each fsynced before /seq reports it; /cgi-bin/stop ends
# the writer and unmounts (then /stopped says "clean").
if [ -n "$DISK" ]; then
  i=0; while [ ! -b "$DISK" ] && [ $i -lt 100 ]; do usleep 100000; i=$((i+1)); done
  mkdir -p /data /www/cgi-bin
  printf '#!/bin/sh\ntouch /tmp/stop\nprintf "Content-Type: text/plain\\r\\n\\r\\nstopping\\n"\n' > /www/cgi-bin/stop
  chmod +x /www/cgi-bin/stop
  if mount -t ext4 "$DISK" /data; then
    ( n=$(tail -n 1 /data/seq 2>/dev/null); n=${n:-0}
      while [ ! -e /tmp/stop ]; do n=$((n+1)); echo $n >> /data/seq
        sync /data/seq && echo $n > /www/seq.part && mv /www/seq.part /www/seq; usleep 200000; done
      umount /data && echo clean > /www/stopped ) &
  else echo "NM-GUEST: cannot mount $DISK" > /dev/console; fi
fi
httpd -p 80 -h /www
[ -n "$IP" ] && arping -U -c 2 -I eth0 ${IP%/*} >/dev/null 2>&1 &
echo "NM-GUEST: READY ip=$IP" > /dev/console
# A NIC plugged later (the new MAC of a move with --new-mac) gets the same address and says
# so, as a guest's network manager would bring it up. Told apart by ifindex, once a second,
# without a fork (a read that times out on an idle fifo, not usleep): a poll that forks costs
# an idle guest under nested TCG three times its CPU.
seen=" $(cat /sys/class/net/eth0/ifindex 2>/dev/null) "
mkfifo /tmp/tick
while :; do
  read -t 1 x <&3
  for d in /sys/class/net/eth*; do
    [ -e "$d/ifindex" ] || continue
    read i < "$d/ifindex"
    case "$seen" in *" $i "*) continue;; esac
    seen="$seen$i "; n=${d##*/}
    ip link set "$n" up; [ -n "$IP" ] || continue
    ip addr add $IP dev "$n"; [ -n "$GW" ] && ip route replace default via $GW
    arping -U -c 2 -I "$n" ${IP%/*} >/dev/null 2>&1 &
    echo "NM-GUEST: NIC $n ip=$IP" > /dev/console
  done
done 3<>/tmp/tick &
exec setsid cttyhack sh
EOS
  chmod +x "$R/init"
  (cd "$R" && find . | cpio -o -H newc 2>/dev/null | gzip -9) > "$DIR/domu-initrd.img.new"
  mv "$DIR/domu-initrd.img.new" "$DIR/domu-initrd.img"
fi

# ---- dom0 root: debootstrap + xen-utils (the hypervisor's exact version) + OVS ----------
R=$DIR/dom0-root
if [ ! -f "$R/.packages" ]; then
  log "debootstrap (a minute or several)"
  [ -x "$R/usr/bin/apt-get" ] || debootstrap --variant=minbase \
     --include=openssh-server,openssh-client,iproute2,busybox,kmod,procps,iputils-ping,netcat-openbsd,curl,openssl,ethtool \
     bookworm "$R" "$MIRROR" > "$DIR/logs/debootstrap.log" 2>&1
  cat > "$R/etc/apt/sources.list" <<EOS
deb ${MIRROR} bookworm main
deb ${MIRROR} bookworm-updates main
deb ${MIRROR}-security bookworm-security main
EOS
  printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d"; chmod +x "$R/usr/sbin/policy-rc.d"
  chroot "$R" apt-get -q update > "$DIR/logs/chroot-apt.log" 2>&1
  DEBIAN_FRONTEND=noninteractive chroot "$R" apt-get -q install -y --no-install-recommends \
     "xen-utils-4.17=$XENVER" "xen-utils-common=$XENVER" xenstore-utils zstd \
     "openvswitch-switch=$OVSVER" >> "$DIR/logs/chroot-apt.log" 2>&1
  got=$(chroot "$R" dpkg-query -W -f='${Version}' xen-utils-4.17)
  [ "$got" = "$XENVER" ] || { echo "xen-utils $got != hypervisor $XENVER" >&2; exit 1; }
  chroot "$R" apt-get clean
  rm -rf "$R"/var/lib/apt/lists/* "$R"/usr/share/doc/* "$R"/usr/share/man/* "$R"/usr/share/locale/* "$R"/usr/share/info/*
  touch "$R/.packages"
fi

log "dom0 configuration"
rm -rf "$R/lib/modules"/*; mkdir -p "$R/lib/modules/$KVER"
MODS="xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xen-netback xen-blkback openvswitch tun loop virtio_net virtio_pci e1000 sch_htb"
for p in $(modpaths $MODS); do
  rel=${p#$KROOT/lib/modules/$KVER/}; mkdir -p "$R/lib/modules/$KVER/$(dirname "$rel")"; cp "$p" "$R/lib/modules/$KVER/$rel"; done
cp "$KROOT/lib/modules/$KVER"/modules.{order,builtin,builtin.modinfo} "$R/lib/modules/$KVER/"
depmod -b "$R" "$KVER"
rm -f "$R"/etc/ssh/ssh_host_*
cp "$DIR/keys/host_ed25519" "$R/etc/ssh/ssh_host_ed25519_key"; cp "$DIR/keys/host_ed25519.pub" "$R/etc/ssh/ssh_host_ed25519_key.pub"
chmod 600 "$R/etc/ssh/ssh_host_ed25519_key"
cat > "$R/etc/ssh/sshd_config.d/lab.conf" <<EOS
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
GSSAPIAuthentication no
MaxStartups 50:30:100
MaxSessions 50
EOS
mkdir -p "$R/root/.ssh"; chmod 700 "$R/root/.ssh"
cat "$DIR/keys/ctl_ed25519.pub" "$DIR/keys/inter_ed25519.pub" > "$R/root/.ssh/authorized_keys"
cp "$DIR/keys/inter_ed25519" "$R/root/.ssh/id_ed25519"
# dom0 -> dom0 (xl migrate's transport): every lab dom0 has the one host key.
echo "10.213.0.* $(cut -d' ' -f1,2 "$DIR/keys/host_ed25519.pub")" > "$R/root/.ssh/known_hosts"
printf 'Host *\n  IdentityFile /root/.ssh/id_ed25519\n  StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n' > "$R/root/.ssh/config"
chmod 600 "$R"/root/.ssh/*
mkdir -p "$R/usr/share/nm"
cp "$DIR/vmlinuz" "$R/usr/share/nm/vmlinuz"; cp "$DIR/domu-initrd.img" "$R/usr/share/nm/domu-initrd.img"
grep -q '^autoballoon="off"' "$R/etc/xen/xl.conf" || echo 'autoballoon="off"' >> "$R/etc/xen/xl.conf"
mkdir -p "$R/etc/nm"
printf '::sysinit:/etc/nm/rc.sh\n::ctrlaltdel:/sbin/reboot\n' > "$R/etc/inittab"
printf '#!/bin/sh\nexec /bin/busybox init\n' > "$R/init"; chmod +x "$R/init"
cat > "$R/etc/nm/rc.sh" <<'EOS'
#!/bin/sh
# dom0 bring-up: mounts, modules, xenstored, xenconsoled, Open vSwitch bridge br0, sshd
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
t() { echo "NM-DOM0: $* uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console; }
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /run; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /dev/shm
# What udev makes on a real dom0: Xen's block hotplug script locks through /dev/stdin.
ln -sfn /proc/self/fd /dev/fd; for i in 0:stdin 1:stdout 2:stderr; do ln -sfn /proc/self/fd/${i%%:*} /dev/${i#*:}; done
mkdir -p /run/sshd /run/xen /var/run/xen-hotplug /var/log/xen /var/lib/xen/save /var/run/openvswitch /etc/openvswitch
mount -t tmpfs -o size=600M,mode=0755 tmpfs /var/lib/xen/save
for m in xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xen-netback xen-blkback openvswitch tun loop virtio_pci virtio_net e1000 sch_htb; do modprobe $m 2>/dev/null; done
mount -t xenfs xenfs /proc/xen
IP=; NAME=xenhost; GW=
for w in $(cat /proc/cmdline); do case "$w" in nm_ip=*) IP=${w#nm_ip=};; nm_name=*) NAME=${w#nm_name=};; nm_gw=*) GW=${w#nm_gw=};; esac; done
hostname $NAME; echo $NAME > /etc/hostname; echo "127.0.1.1 $NAME" >> /etc/hosts
XB=/usr/lib/xen-4.17/bin
$XB/xenstored --pid-file=/run/xenstored.pid
i=0; until xenstore-read -s / >/dev/null 2>&1 || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
$XB/xen-init-dom0 > /var/log/xen/xen-init-dom0.log 2>&1
$XB/xenconsoled --pid-file=/run/xenconsoled.pid
t "xenstored + xenconsoled up"
ovsdb-tool create /etc/openvswitch/conf.db /usr/share/openvswitch/vswitch.ovsschema
# Kept running: under nested TCG a dom0 process dies now and then (see the lab recipe); the
# database lives on in RAM, so a restarted server and switch carry on where they were.
keep() { ( while :; do "$@"; sleep 0.5; done ) </dev/null >/dev/null 2>&1 & }
keep ovsdb-server --remote=punix:/var/run/openvswitch/db.sock --pidfile --log-file=/var/log/ovsdb-server.log /etc/openvswitch/conf.db
i=0; until ovs-vsctl --timeout=2 --no-wait show >/dev/null 2>&1 || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
ovs-vsctl --no-wait init
keep ovs-vswitchd --pidfile --log-file=/var/log/ovs-vswitchd.log
ip link set lo up
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
ovs-vsctl add-br br0 -- set bridge br0 other-config:hwaddr=$(cat /sys/class/net/eth0/address) -- add-port br0 eth0
# Offloads off: the NIC then never DMAs from a guest's grant-mapped pages (the kernel copies
# the frame first), which is where nested TCG corrupts dom0 (see the lab recipe).
ethtool -K eth0 sg off tso off gso off gro off tx off rx off >/dev/null 2>&1
ip link set eth0 up; ip link set br0 up
[ -n "$IP" ] && ip addr add $IP dev br0
[ -n "$GW" ] && ip route add default via $GW
keep /usr/sbin/sshd -D -E /var/log/sshd.log
i=0; until ss -Hltn 'sport = :22' | grep -q . || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
t "READY name=$NAME ip=$IP"
EOS
chmod +x "$R/etc/nm/rc.sh"

log "packing dom0 initramfs"
(cd "$R" && find . -path ./.packages -prune -o -print | cpio -o -H newc 2>/dev/null | zstd -q -T0 -10) > "$DIR/dom0-initrd.img.new"
mv "$DIR/dom0-initrd.img.new" "$DIR/dom0-initrd.img"
rm -rf "$DIR/debs" "$KROOT" "$DIR/domu-root"
echo "Xen $XENVER, kernel $KVER, OVS $OVSVER" > "$DIR/VERSIONS"
touch "$DIR/.done"
# Earlier builds (other versions or an older script) are not used any more.
for old in "$CACHE"/xen-*; do [ "$old" = "$DIR" ] || rm -rf "$old"; done
log "done"
echo "$DIR"
