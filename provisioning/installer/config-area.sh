#!/bin/sh
# The config area: what is a deployed host's own (its address, SSH keys, first boot's token)
# in the last MiB of its disk, outside the host image: a header line "NMHOST1 LENGTH SHA256"
# in the first 512 bytes, then a tar of the files. Written by the installer, read by the
# deployed system at every boot (its root lives in RAM), rewritten by it after its first
# boot's call back. Sourced by the installer (busybox) and the host images' rc.sh.

# config_area_write DISK DIR: DIR's files into DISK's config area ("vda", as in /sys/block).
config_area_write() {
  t=${TMPDIR:-/tmp}/nm-config.tar
  (cd "$2" && tar -c -f "$t" .) || return 1
  len=$(wc -c < "$t"); sum=$(sha256sum < "$t" | cut -d' ' -f1)
  [ "$len" -le $((2047 * 512)) ] || { echo "the config is $len bytes, more than its area holds" >&2; return 1; }
  s=$(cat "/sys/block/$1/size")
  h="NMHOST1 $len $sum"
  { printf '%s\n' "$h"; head -c $((511 - ${#h})) /dev/zero; cat "$t"; } \
    | dd of="/dev/$1" bs=512 seek=$((s - 2048)) conv=notrunc,fsync 2>/dev/null
}

# config_area_read DISK DIR: whether DISK has a sound config area (its files are then in DIR).
config_area_read() {
  t=${TMPDIR:-/tmp}/nm-config.tar
  s=$(cat "/sys/block/$1/size" 2>/dev/null || echo 0); [ "$s" -gt 4096 ] || return 1
  set -- "$1" "$2" $(dd if="/dev/$1" bs=512 skip=$((s - 2048)) count=1 2>/dev/null | head -n 1 | tr -d '\000')
  [ "${3:-}" = NMHOST1 ] || return 1
  dd if="/dev/$1" bs=512 skip=$((s - 2047)) count=2047 2>/dev/null | head -c "$4" > "$t"
  if [ "$(sha256sum < "$t" | cut -d' ' -f1)" != "$5" ]; then
    echo "the config area on /dev/$1 is damaged (its checksum does not match)" >&2; return 1; fi
  mkdir -p "$2" && tar -x -f "$t" -C "$2"
}
