#!/bin/sh
# hardware: the machine as JSON on one line (the appliance's provisioning::Hardware).
# A file's text as a JSON string (quotes, backslashes and control characters dropped), or null.
jstr() { [ -r "$1" ] || { echo null; return; }
  v=$(tr -d '"\\\000-\037' < "$1" | sed 's/^ *//; s/ *$//'); [ -n "$v" ] && echo "\"$v\"" || echo null; }
hardware() {
  fw=bios; [ -d /sys/firmware/efi ] && fw=uefi
  cpus=$(grep -c '^processor' /proc/cpuinfo)
  model=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | tr -d '"\\' | sed 's/^ *//; s/ *$//')
  virt=null; grep -qw vmx /proc/cpuinfo && virt='"vmx"'; grep -qw svm /proc/cpuinfo && virt='"svm"'
  mem=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
  disks=
  for d in /sys/block/*; do n=${d##*/}
    case $n in loop*|ram*|sr*|fd*|zram*|dm-*|md*|nbd*) continue;; esac
    [ -e "$d/device" ] || continue
    bytes=$(( $(cat "$d/size") * 512 ))
    serial=$(jstr "$d/serial"); [ "$serial" = null ] && serial=$(jstr "$d/device/serial")
    rot=null; [ -r "$d/queue/rotational" ] && { [ "$(cat "$d/queue/rotational")" = 1 ] && rot=true || rot=false; }
    disks="$disks${disks:+,}{\"name\":\"$n\",\"bytes\":$bytes,\"model\":$(jstr "$d/device/model"),\"serial\":$serial,\"rotational\":$rot}"
  done
  nics=
  for d in /sys/class/net/*; do n=${d##*/}
    [ -e "$d/device" ] || continue
    speed=$(cat "$d/speed" 2>/dev/null); case "$speed" in ''|-*|*[!0-9]*) speed=null;; esac
    drv=null; [ -e "$d/device/driver" ] && drv="\"$(basename "$(readlink "$d/device/driver")")\""
    nics="$nics${nics:+,}{\"name\":\"$n\",\"mac\":\"$(cat "$d/address")\",\"speed_mbps\":$speed,\"driver\":$drv}"
  done
  echo "{\"arch\":\"$(uname -m)\",\"firmware\":\"$fw\",\"cpus\":$cpus,\"cpu_model\":\"$model\",\"virt\":$virt,\"memory_mib\":$mem,\"disks\":[$disks],\"nics\":[$nics]}"
}
