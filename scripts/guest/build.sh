#!/usr/bin/env bash
# Builds the tiny real guest: the host's Debian kernel and an initramfs of busybox-static plus
# the modules that show the config drive (AHCI cdrom, isofs) and the root disk (virtio-blk).
# Its /init (scripts/guest/init) mounts the config drive labelled config-2, prints the
# instance's metadata on the serial console and stays up (or powers off with
# `stackbed.poweroff` on the kernel command line).
#
#   scripts/guest/build.sh [OUT_DIR]        # default: target/guest
#
# Needs linux-image-amd64, busybox-static, cpio and xz-utils (Debian packages). Nothing is committed:
# the result is cached in OUT_DIR/<kernel version>-<hash of this script and init>/ and
# OUT_DIR/vmlinuz, OUT_DIR/initrd.img link to the newest build. Prints the build directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/../../target/guest}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

kernel="$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1 || true)"
if [ -z "$kernel" ]; then
    echo "guest: no kernel in /boot (apt-get install linux-image-amd64)" >&2
    exit 1
fi
kver="${kernel#/boot/vmlinuz-}"
moddir="/lib/modules/$kver"
[ -f "$moddir/modules.dep" ] || { echo "guest: no $moddir/modules.dep for kernel $kver" >&2; exit 1; }
busybox="$(command -v busybox || true)"
if [ -z "$busybox" ] || ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
    [ -x /bin/busybox ] && busybox=/bin/busybox
fi
[ -n "$busybox" ] || { echo "guest: no busybox (apt-get install busybox-static)" >&2; exit 1; }
command -v cpio >/dev/null || { echo "guest: no cpio (apt-get install cpio)" >&2; exit 1; }

key="$kver-$(cat "$0" "$here/init" | sha256sum | cut -c1-12)"
dir="$out/$key"
if [ -s "$dir/vmlinuz" ] && [ -s "$dir/initrd.img" ]; then
    ln -sfn "$key/vmlinuz" "$out/vmlinuz"
    ln -sfn "$key/initrd.img" "$out/initrd.img"
    echo "$dir"
    exit 0
fi

# The modules and their dependencies, dependencies first (modules.dep lists a module's
# dependencies; each is loaded before the module itself). Built-in ones are skipped.
wanted="virtio_pci virtio_blk ahci sr_mod isofs"
order=()
declare -A seen=()
resolve() {
    local rel="$1"
    [ -n "${seen[$rel]:-}" ] && return 0
    seen[$rel]=1
    local deps
    deps="$(grep -m1 "^$rel:" "$moddir/modules.dep" | cut -d: -f2-)"
    local d
    for d in $deps; do resolve "$d"; done
    order+=("$rel")
}
for m in $wanted; do
    rel="$(grep -m1 -E "/${m}\.ko(\.(xz|zst|gz))?:" "$moddir/modules.dep" | cut -d: -f1 || true)"
    if [ -z "$rel" ]; then
        grep -qE "/${m}\.ko" "$moddir/modules.builtin" || { echo "guest: kernel $kver has no module $m" >&2; exit 1; }
        continue
    fi
    resolve "$rel"
done

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,mnt,modules}
cp "$busybox" "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"
install -m 0755 "$here/init" "$stage/init"
: >"$stage/modules/order"
for rel in "${order[@]}"; do
    name="$(basename "$rel")"
    case "$name" in
    *.ko.xz) xz -dc "$moddir/$rel" >"$stage/modules/${name%.xz}"; name="${name%.xz}" ;;
    *.ko.zst) zstd -qdc "$moddir/$rel" >"$stage/modules/${name%.zst}"; name="${name%.zst}" ;;
    *.ko.gz) gzip -dc "$moddir/$rel" >"$stage/modules/${name%.gz}"; name="${name%.gz}" ;;
    *) cp "$moddir/$rel" "$stage/modules/$name" ;;
    esac
    echo "$name" >>"$stage/modules/order"
done

rm -rf "$dir.tmp"
mkdir -p "$dir.tmp"
(cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -9n) >"$dir.tmp/initrd.img"
# Under TCG, decompressing the bzImage takes longer than the rest of the boot: when the
# kernel is XZ-compressed and can boot through PVH (QEMU loads its ELF directly), the guest
# gets the uncompressed vmlinux instead (2-3 times faster to boot), else the bzImage.
# Debian's /boot/vmlinuz-* is root-only: the copy is readable by the QEMU user.
config="/boot/config-$kver"
off="$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$kernel" 2>/dev/null | head -n 1 | cut -d: -f1 || true)"
if [ -n "$off" ] && [ -f "$config" ] && grep -q '^CONFIG_PVH=y' "$config" && command -v xz >/dev/null &&
    xz -dc --single-stream < <(tail -c +"$((off + 1))" "$kernel") >"$dir.tmp/vmlinuz" 2>/dev/null &&
    [ "$(head -c 4 "$dir.tmp/vmlinuz" | od -An -tx1 | tr -d ' ')" = "7f454c46" ]; then
    echo "pvh-vmlinux" >"$dir.tmp/kernel-format"
else
    cp "$kernel" "$dir.tmp/vmlinuz"
    echo "bzImage" >"$dir.tmp/kernel-format"
fi
chmod 0644 "$dir.tmp/vmlinuz" "$dir.tmp/initrd.img"
echo "$kver" >"$dir.tmp/kernel-version"
rm -rf "$dir"
mv "$dir.tmp" "$dir"
ln -sfn "$key/vmlinuz" "$out/vmlinuz"
ln -sfn "$key/initrd.img" "$out/initrd.img"
echo "$dir"
