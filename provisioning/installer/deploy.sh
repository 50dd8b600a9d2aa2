#!/bin/sh
# deploy: writes the host image to the machine's disk, as its kernel command line says
# (nm_image URL, nm_size bytes, nm_sha256, nm_disk name or serial or empty, the host's
# network), then its config area, and reboots into it. The disk stays unbootable (its first
# MiB zero) until the image's SHA-256, computed while it streams in, matches; the first MiB
# is written last. Every failure is reported to the appliance with the reason.
# Needs say, call_back (the installer's init) and config-area.sh.

# deploy_fail WHY: said and reported; then the machine boots again (its disk unbootable) and
# waits at its network boot, where the appliance tells it why until `hosts deploy`.
deploy_fail() {
  say "FAILED: $*"
  why=$(echo "$*" | tr -d '"\\\000-\037')
  call_back FAILED "{\"token\":\"$TOKEN\",\"failed\":\"$why\"}"
  sync; sleep 3; reboot -f
}

# The disk named by name or serial; with none named, the first that holds $1 bytes.
deploy_disk() {
  for b in /sys/block/*; do d=${b##*/}
    case $d in loop*|ram*|sr*|fd*|zram*|dm-*|md*|nbd*) continue;; esac
    [ -e "$b/device" ] || continue
    s=$(cat "$b/serial" "$b/device/serial" 2>/dev/null | head -n 1 | tr -d ' ')
    if [ -n "$DISK" ]; then
      [ "$d" = "$DISK" ] || [ "$s" = "$DISK" ] && { echo "$d"; return; }
    elif [ $(( $(cat "$b/size") * 512 )) -ge "$1" ]; then echo "$d"; return; fi
  done
}

deploy() {
  for v in IMAGE SIZE SHA256 IP BRIDGE; do
    eval "[ -n \"\$$v\" ]" || deploy_fail "the installer was not told nm_$(echo $v | tr A-Z a-z)"; done
  # The image, then the config area's MiB, and a MiB between them.
  need=$((SIZE + 2 * 1048576))
  D=$(deploy_disk $need)
  [ -n "$D" ] || deploy_fail "no disk ${DISK:+named $DISK }on this machine holds the image ($SIZE bytes) and its config area"
  have=$(( $(cat /sys/block/$D/size) * 512 ))
  [ "$have" -ge "$need" ] || deploy_fail "disk $D is too small: $have bytes, the image and its config area need $need"
  say "writing $IMAGE ($SIZE bytes) to /dev/$D"
  dd if=/dev/zero of=/dev/$D bs=1M count=1 conv=fsync 2>/dev/null || deploy_fail "cannot write to /dev/$D"
  rm -f /tmp/image.fifo; mkfifo /tmp/image.fifo
  sha256sum < /tmp/image.fifo > /tmp/image.sum &
  summer=$!
  # The first MiB is kept aside; the rest goes to the disk as it arrives.
  ( set -o pipefail
    wget -q -O - "$IMAGE" 2>/tmp/wget.err | tee /tmp/image.fifo \
      | { dd of=/tmp/head bs=1M count=1 iflag=fullblock 2>/dev/null
          dd of=/dev/$D bs=1M seek=1 iflag=fullblock conv=fsync 2>/tmp/dd.err; } )
  ok=$?
  wait $summer
  [ $ok = 0 ] || deploy_fail "writing the image to /dev/$D: $(cat /tmp/wget.err /tmp/dd.err 2>/dev/null | tr '\n' ' ')"
  got=$(cut -d' ' -f1 /tmp/image.sum)
  [ "$got" = "$SHA256" ] || deploy_fail "image checksum: the image's SHA-256 is $SHA256, what arrived has $got; /dev/$D is left unbootable"
  say "image written and verified: sha256 $got"

  mkdir -p /tmp/host
  ssh-keygen -q -t ed25519 -N '' -C "root@$NAME" -f /tmp/host/ssh_host_ed25519_key
  echo "$KEY" | tr ',' ' ' > /tmp/host/authorized_keys
  HK=$(cut -d' ' -f1,2 /tmp/host/ssh_host_ed25519_key.pub)
  call_back WRITTEN "{\"token\":\"$TOKEN\",\"sha256\":\"$got\",\"disk\":\"$D\",\"host_key\":\"$HK\"}" \
    || { say "FAILED: the appliance did not take the report; /dev/$D is left unbootable"; exec setsid cttyhack sh; }
  first=$(sed -n 's/.*"token":"\([^"]*\)".*/\1/p' /tmp/answer)
  enrol=$(sed -n 's/.*"callback":"\([^"]*\)".*/\1/p' /tmp/answer)
  # No first boot's token: the appliance recorded a failure instead (an image replaced while
  # this one was written). Back to the network boot, which says why.
  if [ -z "$first" ]; then
    say "FAILED: the appliance did not accept what was written; /dev/$D is left unbootable"
    sync; sleep 3; reboot -f
  fi
  MAC=$(cat /sys/class/net/eth0/address)
  cat > /tmp/host/host.conf <<C
NAME=$NAME
IP=$IP
GW=$GW
DNS=$DNS
DOMAIN=$DOMAIN
MAC=$MAC
BRIDGE=$BRIDGE
TOKEN=$first
CALLBACK=$enrol
C
  config_area_write "$D" /tmp/host || deploy_fail "writing the config area of /dev/$D"
  dd if=/tmp/head of=/dev/$D bs=1M conv=notrunc,fsync 2>/dev/null || deploy_fail "writing the first MiB of /dev/$D"
  sync
  say "DEPLOYED to /dev/$D; rebooting into $NAME"
  sleep 1; reboot -f
}
