#!/bin/bash
# mmdebstrap's customize hook for build.sh: makes the root file system ROOT a
# Vagrant box. KEY: Vagrant's insecure public key; WHEELS: the wheelhouse.
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: customize.sh ROOT KEY WHEELS" >&2; exit 2; }
ROOT=$1 KEY=$2 WHEELS=$3

# The vagrant user: Vagrant's key, sudo without a password.
chroot "$ROOT" useradd --create-home --shell /bin/bash --groups sudo vagrant
install -d -m 700 -o 1000 -g 1000 "$ROOT/home/vagrant/.ssh"
install -m 600 -o 1000 -g 1000 "$KEY" "$ROOT/home/vagrant/.ssh/authorized_keys"
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >"$ROOT/etc/sudoers.d/vagrant"
chmod 440 "$ROOT/etc/sudoers.d/vagrant"

# GRUB (BIOS) from the one partition: build.sh writes its boot sector and this
# core image to the disk. /vmlinuz and /initrd.img follow kernel upgrades.
install -d "$ROOT/boot/grub"
cp -r "$ROOT/usr/lib/grub/i386-pc" "$ROOT/boot/grub/"
chroot "$ROOT" grub-mkimage -O i386-pc -o /boot/grub/core.img -p '(hd0,msdos1)/boot/grub' \
  biosdisk part_msdos ext2 normal linux
cat >"$ROOT/boot/grub/grub.cfg" <<'CFG'
set timeout=1
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
menuentry 'Debian 12 (ovsfoot box)' {
  linux /vmlinuz root=/dev/vda1 ro net.ifnames=0 console=tty0 console=ttyS0,115200
  initrd /initrd.img
}
CFG

# eth0 by DHCP on Vagrant's management network; Vagrant configures the others
# with ifupdown.
echo '/dev/vda1 / ext4 errors=remount-ro 0 1' >"$ROOT/etc/fstab"
cat >"$ROOT/etc/network/interfaces" <<'IF'
source /etc/network/interfaces.d/*
auto lo
iface lo inet loopback
allow-hotplug eth0
iface eth0 inet dhcp
IF
echo debian >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 debian\n' >"$ROOT/etc/hosts"

# Each VM its own identity: machine-id and SSH host keys made at first boot.
: >"$ROOT/etc/machine-id"
rm -f "$ROOT"/etc/ssh/ssh_host_*
cat >"$ROOT/etc/systemd/system/ssh-hostkeys.service" <<'UNIT'
[Unit]
Description=SSH host keys of this machine
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
RequiredBy=ssh.service
UNIT
chroot "$ROOT" systemctl enable --quiet ssh-hostkeys.service ssh.service

# OVS and OVN start where provisioning gives a node its role.
chroot "$ROOT" systemctl disable --quiet openvswitch-switch ovn-central ovn-host

# ovsfoot's wheelhouse, for install.sh --wheels.
install -d "$ROOT/var/cache/ovsfoot"
cp -r "$WHEELS" "$ROOT/var/cache/ovsfoot/wheels"
