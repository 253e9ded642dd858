#!/bin/bash
# Builds a vagrant-libvirt box of Debian 12 from Debian packages alone (mmdebstrap),
# with everything the lab's nodes install baked in, so that `vagrant up` downloads
# nothing: OVS, OVN, bcc, the kernel's headers, the measuring tools, and a
# wheelhouse of ovsfoot and its Python dependencies (install.sh installs from it
# with --no-index). The disk boots like any: an MBR, GRUB (BIOS) in the gap
# before the one partition, ext4 made from the tree (mkfs.ext4 -d: no loop
# device, no mount). The vagrant user has Vagrant's insecure key,
# which Vagrant replaces at the first `vagrant up`, and password-less sudo.
#
# The box is cached in OUT (/var/cache/ovsfoot/box, beside the lab's kernels, so a
# new clone finds it): it is rebuilt only when its inputs change (this
# script, the Vagrant key, setup.py; not the archive's newer package versions:
# `--force` rebuilds).
USAGE="build.sh [--out DIR] [--src DIR] [--force yes] [--size GIB]"
# shellcheck source-path=SCRIPTDIR/../provision source=../provision/common.sh
. "$(dirname "$0")/../provision/common.sh"
SCRIPT=box
SRC=$(cd "$PROVISION/../.." && pwd)
OUT=${OVSFOOT_CACHE:-/var/cache/ovsfoot}/box FORCE=no SIZE=10
parse_args "out src force size" "$@"
positional 0
[ "$(id -u)" = 0 ] || die "build.sh makes a root file system: run it as root"
need mmdebstrap:mmdebstrap mkfs.ext4:e2fsprogs qemu-img:qemu-utils tar:tar \
  sha256sum:coreutils dd:coreutils
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BOX=$OUT/ovsfoot-bookworm-libvirt.box

# Everything each role's provisioning installs (install.sh), and what Vagrant and
# the experiment need in a box.
PKGS=(systemd-sysv udev kmod ifupdown isc-dhcp-client openssh-server sudo rsync
      linux-image-amd64 linux-headers-amd64 initramfs-tools grub-pc-bin ca-certificates iproute2
      iputils-ping procps less openssl
      openvswitch-switch ovn-host ovn-central python3-venv python3-bpfcc bpfcc-tools
      iperf3 sockperf conntrack ethtool tcpdump)
MIRROR=http://deb.debian.org/debian
KEY=$(find /usr/share/rubygems-integration/all/gems /usr/lib/ruby/vendor_ruby -path \
  '*/vagrant-*/keys/vagrant.pub' -print -quit 2>/dev/null || true)
[ -n "$KEY" ] || die "Vagrant's insecure public key (keys/vagrant.pub) not found: install the Debian package vagrant"

BOXSRC=$PROVISION/../box
inputs=$( { cat "$BOXSRC"/build.sh "$BOXSRC"/customize.sh "$BOXSRC"/Vagrantfile "$KEY" "$SRC/setup.py"; echo "${PKGS[*]} $SIZE"; } | sha256sum | cut -c1-16)
if [ "$FORCE" = no ] && [ -e "$BOX" ] && [ "$(cat "$BOX.inputs" 2>/dev/null)" = "$inputs" ]; then
  step "$BOX is up to date (inputs $inputs)"
  exit 0
fi

WORK=$(mktemp -d /var/tmp/ovsfoot-box.XXXXXX)
trap 'rm -rf --one-file-system "$WORK"' EXIT
ROOT=$WORK/root
started=$SECONDS
elapsed() { echo "$((SECONDS - started)) s"; }

step "wheelhouse: ovsfoot and its Python dependencies, with setuptools and wheel to build it"
/usr/bin/python3 -m pip wheel --quiet --wheel-dir "$WORK/wheels" "$SRC" setuptools wheel
(cd "$WORK/wheels" && printf '    %s\n' *)

step "Debian 12 root file system with mmdebstrap (${#PKGS[@]} packages and their dependencies; takes minutes)"
# This machine's downloaded packages are reused (hard links), the rest is fetched.
# (The hooks' "$1", the root file system, is mmdebstrap's to expand.)
# shellcheck disable=SC2016
mmdebstrap --quiet --variant=apt --skip=download/empty \
  --include="$(IFS=,; echo "${PKGS[*]}")" \
  --setup-hook='mkdir -p "$1/var/cache/apt/archives" && find /var/cache/apt/archives -maxdepth 1 -name "*.deb" -exec cp -l -t "$1/var/cache/apt/archives" {} + 2>/dev/null || true' \
  --customize-hook="$BOXSRC/customize.sh \"\$1\" $KEY $WORK/wheels" \
  bookworm "$ROOT" \
  "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
  "deb http://deb.debian.org/debian-security bookworm-security main"
step "root file system: $(du -sh "$ROOT" | cut -f1) ($(elapsed))"

mkdir -p "$WORK/box"
kernel=$(basename "$(readlink "$ROOT/vmlinuz")")
step "kernel ${kernel#vmlinuz-}; disk: MBR, GRUB, ext4 of $SIZE GiB made from the tree, as qcow2"
# The partition from 1 MiB on; GRUB's boot sector in the MBR and its core image
# (customize.sh made it) in the sectors between.
truncate -s "${SIZE}G" "$WORK/disk.raw"
le32() { printf '\\x%02x' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24)); }
# the partition table: one entry (bootable, Linux, LBA 2048 on), the signature
# shellcheck disable=SC2059
printf "\\x80\\xfe\\xff\\xff\\x83\\xfe\\xff\\xff$(le32 2048)$(le32 $((SIZE * 2097152 - 2048)))" |
  dd of="$WORK/disk.raw" bs=1 seek=446 conv=notrunc status=none
printf '\x55\xaa' | dd of="$WORK/disk.raw" bs=1 seek=510 conv=notrunc status=none
truncate -s $((SIZE * 1024 - 1))M "$WORK/part.raw"
mkfs.ext4 -q -L root -d "$ROOT" "$WORK/part.raw"
dd if="$WORK/part.raw" of="$WORK/disk.raw" bs=1M seek=1 conv=sparse,notrunc status=none
rm "$WORK/part.raw"
dd if="$ROOT/usr/lib/grub/i386-pc/boot.img" of="$WORK/disk.raw" bs=440 count=1 conv=notrunc \
  status=none
dd if="$ROOT/boot/grub/core.img" of="$WORK/disk.raw" bs=512 seek=1 conv=notrunc status=none
qemu-img convert -O qcow2 "$WORK/disk.raw" "$WORK/box/box.img"
rm "$WORK/disk.raw"

printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %s}\n' "$SIZE" \
  >"$WORK/box/metadata.json"
cp "$BOXSRC/Vagrantfile" "$WORK/box/Vagrantfile"
tar -C "$WORK/box" -cf "$BOX.tmp" metadata.json Vagrantfile box.img
mv "$BOX.tmp" "$BOX"
echo "$inputs" >"$BOX.inputs"
step "$BOX: $(du -h "$BOX" | cut -f1), inputs $inputs ($(elapsed))"
