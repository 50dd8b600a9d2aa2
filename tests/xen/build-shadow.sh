#!/bin/bash
# The lab's Xen hypervisor rebuilt with shadow paging (CONFIG_SHADOW_PAGING=y), which Debian's
# build leaves out and PV live migration needs (PV log-dirty is shadow-only). After
# ../shared/lab/xen/build-xen-shadow.sh. Usage: build-shadow.sh DIR, DIR being build.sh's output;
# writes DIR/xen-shadow.elf once and prints its path. Only the hypervisor is rebuilt: dom0's tools
# stay build.sh's (xl needs the hypervisor's major.minor only).
# Debian's mirror serves the binary debs of the security release but not always their source:
# the exact version is tried first, then the newest 4.17 source it serves (the hypervisor then
# says 4.17.5 to tools of 4.17.7: it works, the recipe found, but lacks later XSA fixes: lab only).
# Needs deb-src entries: if apt has none for xen, one file is added beside the deb entries.
set -euo pipefail
DIR=$1
OUT=$DIR/xen-shadow.elf
log() { echo "[xen-shadow $(date +%T)] $*" >&2; }
if [ -s "$OUT" ]; then echo "$OUT"; exit 0; fi
[ -f "$DIR/.done" ] || { echo "$DIR is not a finished Xen lab build" >&2; exit 1; }
XENVER=$(awk '{print $2; exit}' "$DIR/VERSIONS" | tr -d ,)
W=$DIR/shadow-src; mkdir -p "$W" "$DIR/logs"; cd "$W"

if ! apt-cache showsrc xen 2>/dev/null | grep -q '^Version: 4\.17'; then
  SRCF=/etc/apt/sources.list.d/netmigrate-xenlab-deb-src.sources
  if [ ! -f $SRCF ]; then
    log "adding deb-src entries ($SRCF) from the Debian deb entries"
    : > $SRCF.tmp
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] && grep -q 'debian' "$f" && sed 's/^Types:[[:space:]]*deb[[:space:]]*$/Types: deb-src/' "$f" >> $SRCF.tmp && echo >> $SRCF.tmp
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -f "$f" ] && grep -E '^deb[[:space:]].*debian' "$f" | sed 's/^deb /deb-src /' | while read -r l; do
        printf 'Types: deb-src\nURIs: %s\nSuites: %s\nComponents: %s\n\n' "$(echo "$l" | awk '{print $2}')" \
          "$(echo "$l" | awk '{print $3}')" "$(echo "$l" | cut -d' ' -f4-)"; done >> $SRCF.tmp
    done
    grep -q '^Types: deb-src' $SRCF.tmp || { rm -f $SRCF.tmp; echo "no Debian deb entries to copy" >&2; exit 1; }
    mv $SRCF.tmp $SRCF
  fi
  apt-get update -q > "$DIR/logs/shadow-apt-update.log" 2>&1
fi

fetch() { ls xen_"$1".dsc >/dev/null 2>&1 || apt-get -o APT::Sandbox::User=root -q source --download-only "xen=$1" >> "$DIR/logs/shadow-source.log" 2>&1; }
VER=
if fetch "$XENVER"; then VER=$XENVER; else
  for v in $(apt-cache showsrc xen | awk '/^Version: 4\.17\./{print $2}' | sort -rV | uniq); do
    if fetch "$v"; then VER=$v; break; fi
  done
  [ -n "$VER" ] || { echo "no xen 4.17 source package can be downloaded" >&2; exit 1; }
  log "the mirror has no source for xen=$XENVER; building the hypervisor from xen=$VER"
fi
S=$W/xen-$VER
if [ ! -f "$S/.unpacked" ]; then
  command -v dpkg-source >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends dpkg-dev >&2
  rm -rf "$S"; dpkg-source -x "xen_$VER.dsc" "$S" > "$DIR/logs/shadow-unpack.log"
  touch "$S/.unpacked"
fi
need=()
for p in bison:bison flex:flex python3:python3 lsb_release:lsb-release; do
  command -v "${p%%:*}" >/dev/null || need+=("${p#*:}")
done
[ ${#need[@]} = 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2

cd "$S"
unset CFLAGS CXXFLAGS CPPFLAGS LDFLAGS   # as debian/rules: dpkg's flags are not for Xen
export WGET=/bin/false GIT=/bin/false
export DEB_VERSION="$VER+nmshadow" DEB_MAINTAINER="$(sed -ne 's/^Maintainer: \(.*\)$/\1/p' debian/control)"
MK=(XEN_TARGET_ARCH=x86_64 XEN_COMPILE_ARCH=x86_64 CC=x86_64-linux-gnu-gcc LD=x86_64-linux-gnu-ld)
# Debian's shipped config of the lab's hypervisor, plus shadow paging.
rm -rf "$W/hv" && mkdir -p "$W/hv" && (cd "$W/hv" && apt-get -o APT::Sandbox::User=root -q download "xen-hypervisor-4.17-amd64=$XENVER" >&2)
dpkg-deb -x "$W"/hv/xen-hypervisor-4.17-amd64_*.deb "$W/hv/x"
cp "$W/hv/x/boot/xen-4.17-amd64.config" xen/.config; rm -rf "$W/hv"
sed -i -e '/CONFIG_SHADOW_PAGING/d' -e '/CONFIG_PV[= ]/d' xen/.config
printf 'CONFIG_PV=y\nCONFIG_SHADOW_PAGING=y\n' >> xen/.config
make -C xen olddefconfig "${MK[@]}" > "$DIR/logs/shadow-config.log" 2>&1
grep -qx 'CONFIG_SHADOW_PAGING=y' xen/.config || { echo "olddefconfig dropped SHADOW_PAGING" >&2; exit 1; }
log "make -C xen (about a minute or two; log $DIR/logs/shadow-make.log)"
make -j2 -C xen "${MK[@]}" > "$DIR/logs/shadow-make.log" 2>&1 || { tail -30 "$DIR/logs/shadow-make.log" >&2; exit 1; }
cp xen/xen "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
echo "$VER" > "$DIR/xen-shadow.VERSION"
cd "$DIR" && rm -rf "$W"
log "built $OUT from xen=$VER"
echo "$OUT"
