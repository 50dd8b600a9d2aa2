#!/bin/sh
# A deployed host's bring-up. Its root lives in RAM (the image's initramfs); what is the
# host's own sits in the config area its installer wrote (config-area.sh), a tar of
#   host.conf             NAME IP (address/prefix) GW DNS DOMAIN MAC BRIDGE, and at first
#                         boot TOKEN and CALLBACK (its one-time call back to the appliance)
#   ssh_host_ed25519_key  its SSH host key (and .pub)
#   authorized_keys       the appliance's public key
# Profile xen: xenstored, xenconsoled (dom0 under Xen); profile qemu: KVM's modules. Then
# Open vSwitch with the host's address on its bridge, sshd, and the first boot's call back.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
PROFILE=$(cat /etc/nm/profile)
say() { echo "NM-HOST: $* uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console; }
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /run; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /dev/shm
# What udev makes on a full system: Xen's block hotplug script locks through /dev/stdin.
ln -sfn /proc/self/fd /dev/fd; for i in 0:stdin 1:stdout 2:stderr; do ln -sfn /proc/self/fd/${i%%:*} /dev/${i#*:}; done
mkdir -p /run/sshd /run/nm /var/run/openvswitch /etc/openvswitch /var/log
# Where VMs' saved states and disks go (the Xen and the QEMU driver's defaults): the root is
# in RAM, whose file system reports no free space, so each is a tmpfs with its own room.
for d in /var/lib/xen/save /var/lib/xen/images /var/lib/netmigrate; do
  mkdir -p $d; mount -t tmpfs -o size=60%,mode=0755 tmpfs $d; done
# Drivers for what this machine has (there is no udev): every device's modalias.
cat /sys/bus/*/devices/*/modalias 2>/dev/null | sort -u | while read -r a; do modprobe -q "$a" 2>/dev/null; done
for m in openvswitch tun loop sch_htb virtio_blk virtio_net; do modprobe -q $m 2>/dev/null; done

# ---- the config area (config-area.sh) --------------------------------------------------
. /etc/nm/config-area.sh
CONF=/run/nm/config; DISK=
read_config() {
  for b in /sys/block/*; do
    d=${b##*/}
    case $d in loop*|ram*|sr*|zram*|dm-*) continue;; esac
    if config_area_read "$d" $CONF 2>/run/nm/config.err; then DISK=$d; return 0; fi
    [ -s /run/nm/config.err ] && say "FAILED: $(cat /run/nm/config.err)"
  done
  return 1
}
if ! read_config; then
  say "FAILED: no config area on any disk; this image is deployed by netmigrate's installer"
  exec /bin/sh
fi
NAME=host IP= GW= DNS= DOMAIN= MAC= BRIDGE=br0 TOKEN= CALLBACK=
. $CONF/host.conf
hostname "$NAME"; echo "$NAME" > /etc/hostname; echo "127.0.1.1 $NAME${DOMAIN:+ $NAME.$DOMAIN}" >> /etc/hosts
[ -n "$DNS" ] && { [ -n "$DOMAIN" ] && echo "search $DOMAIN"; echo "nameserver $DNS"; } > /etc/resolv.conf
install -m 600 $CONF/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key
install -m 644 $CONF/ssh_host_ed25519_key.pub /etc/ssh/ssh_host_ed25519_key.pub
mkdir -p /root/.ssh; chmod 700 /root/.ssh; install -m 600 $CONF/authorized_keys /root/.ssh/authorized_keys
echo "$DISK" > /run/nm/disk
say "config from /dev/$DISK: $NAME $IP"

# ---- the hypervisor -------------------------------------------------------------------
if [ "$PROFILE" = xen ]; then
  mkdir -p /run/xen /var/run/xen-hotplug /var/log/xen
  for m in xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xen-netback xen-blkback; do modprobe -q $m; done
  mount -t xenfs xenfs /proc/xen
  XB=$(ls -d /usr/lib/xen-*/bin | head -n 1)
  $XB/xenstored --pid-file=/run/xenstored.pid
  i=0; until xenstore-read -s / >/dev/null 2>&1 || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
  $XB/xen-init-dom0 > /var/log/xen/xen-init-dom0.log 2>&1
  $XB/xenconsoled --pid-file=/run/xenconsoled.pid
  say "xenstored and xenconsoled up"
else
  modprobe -q kvm_intel 2>/dev/null || modprobe -q kvm_amd 2>/dev/null
  [ -e /dev/kvm ] && say "KVM available" || say "no KVM (no virtualization extensions): QEMU runs guests with TCG"
fi

# ---- Open vSwitch, the address on its bridge --------------------------------------------
ovsdb-tool create /etc/openvswitch/conf.db /usr/share/openvswitch/vswitch.ovsschema
# Kept running: a switch daemon that dies is started again with the database it had.
keep() { ( while :; do "$@"; sleep 0.5; done ) </dev/null >/dev/null 2>&1 & }
keep ovsdb-server --remote=punix:/var/run/openvswitch/db.sock --pidfile --log-file=/var/log/ovsdb-server.log /etc/openvswitch/conf.db
i=0; until ovs-vsctl --timeout=2 --no-wait show >/dev/null 2>&1 || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
ovs-vsctl --no-wait init
keep ovs-vswitchd --pidfile --log-file=/var/log/ovs-vswitchd.log
ip link set lo up
# The NIC it was deployed through (by MAC), else the first Ethernet one.
NIC=
i=0; while [ -z "$NIC" ] && [ $i -lt 100 ]; do
  for n in /sys/class/net/*; do
    [ -e "$n/device" ] || continue
    if [ -z "$MAC" ] || [ "$(cat $n/address)" = "$MAC" ]; then NIC=${n##*/}; break; fi
  done
  [ -n "$NIC" ] || { sleep 0.1; i=$((i+1)); }
done
[ -n "$NIC" ] || { say "FAILED: no network interface${MAC:+ with MAC $MAC}"; exec /bin/sh; }
ovs-vsctl --may-exist add-br "$BRIDGE" -- set bridge "$BRIDGE" other-config:hwaddr=$(cat /sys/class/net/$NIC/address) -- --may-exist add-port "$BRIDGE" "$NIC"
# Offloads off under Xen: the NIC then never DMAs from a guest's grant-mapped pages.
[ "$PROFILE" = xen ] && ethtool -K "$NIC" sg off tso off gso off gro off tx off rx off >/dev/null 2>&1
ip link set "$NIC" up; ip link set "$BRIDGE" up
[ -n "$IP" ] && ip addr add "$IP" dev "$BRIDGE"
[ -n "$GW" ] && ip route add default via "$GW"
keep /usr/sbin/sshd -D -E /var/log/sshd.log
i=0; until ss -Hltn 'sport = :22' | grep -q . || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
say "READY name=$NAME ip=$IP profile=$PROFILE"

# ---- the first boot's call back ---------------------------------------------------------
if [ -n "$TOKEN" ] && [ -n "$CALLBACK" ]; then
  HK=$(cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub)
  n=0; while [ $n -lt 60 ]; do
    code=$(curl -sS -o /run/nm/answer -w '%{http_code}' -H 'Content-Type: application/json' \
      --data "{\"token\":\"$TOKEN\",\"host_key\":\"$HK\"}" "$CALLBACK" 2>/run/nm/curl.err || true)
    case $code in
      2??) say "ENROLLED $(cat /run/nm/answer)"; break;;
      4??) say "REFUSED $code $(cat /run/nm/answer)"; break;;
    esac
    n=$((n+1)); sleep 2
  done
  # Used (or refused): never sent again. The config area keeps the rest.
  sed -i '/^TOKEN=/d; /^CALLBACK=/d' $CONF/host.conf && config_area_write "$DISK" $CONF
fi
