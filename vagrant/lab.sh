#!/bin/bash
# `make vagrant-lab`: the Vagrant lab on this machine's libvirt, from the box of
# vagrant/box/build.sh (`make vagrant-box`), with nothing downloaded:
#   libvirtd (started if it does not run), the box (added, or replaced when it was
#   rebuilt), `vagrant up --provider=libvirt` (the VMs boot in parallel, then central,
#   hv1 .. hvN, N=OVSFOOT_CHASSIS (2), are provisioned in turn), experiment.sh,
#   `vagrant destroy -f`, and a check that no domain, network or volume of the lab is left.
# KVM where it works, else software emulation (domain type qemu): a short boot of
# the box's kernel with KVM decides. Each step says how long it took.
# With MACHINE arguments (e.g. `lab.sh central hv1`), only those come up, and the
# experiment runs only if hv1 and hv2 are among them.
# OVSFOOT_KEEP=yes keeps the VMs (no destroy); the Vagrantfile's OVSFOOT_* sizes
# apply (here 1 CPU and 1280 MiB per VM unless set).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=provision/common.sh
. "$(dirname "$0")/provision/common.sh"
SCRIPT=vagrant-lab MAKE_DEPS=yes
cd "$(dirname "$0")"
BOX=${BOX:-${OVSFOOT_CACHE:-/var/cache/ovsfoot}/box/ovsfoot-bookworm-libvirt.box}
NAME=ovsfoot/bookworm
export OVSFOOT_BOX=$NAME OVSFOOT_OFFLINE=${OVSFOOT_OFFLINE:-yes}
export VAGRANT_DEFAULT_PROVIDER=libvirt VAGRANT_CHECKPOINT_DISABLE=1
export OVSFOOT_CPUS=${OVSFOOT_CPUS:-1} OVSFOOT_MEMORY=${OVSFOOT_MEMORY:-1280}
export LIBVIRT_DEFAULT_URI=qemu:///system
started=$SECONDS
step() { printf '[vagrant-lab %4d s] %s\n' "$((SECONDS - started))" "$*"; }
need vagrant:vagrant virsh:libvirt-clients libvirtd:libvirt-daemon \
  virtlogd:libvirt-daemon qemu-system-x86_64:qemu-system-x86 tar:tar flock:util-linux
[ "$(id -u)" = 0 ] || die "run as root: it starts libvirtd and its VMs"
[ -e "$BOX" ] || die "$BOX not found: run \`make vagrant-box\` first"
# One Vagrant lab at a time: its domains and networks have fixed names.
exec 9>/tmp/ovsfoot-vagrant-lab.lock
flock -n 9 || { step "waiting for another vagrant lab to finish"; flock 9; }

# libvirt (9.0) checks /dev/kvm as its qemu user (libvirt-qemu): where that user
# cannot open it but libvirt's own probe of qemu found KVM, every call takes the cached
# qemu capabilities for outdated and probes qemu again (2 s each, under emulation): that
# was most of the 10 min a lab spent before provisioning. Debian's udev rule gives
# /dev/kvm to group kvm, mode 0660; so does this where nothing did (no udev here).
if [ -c /dev/kvm ] && [ "$(stat -c %a:%G /dev/kvm)" = 600:root ] && getent group kvm >/dev/null; then
  step "/dev/kvm: group kvm, mode 0660, as Debian's udev rule sets it (it was root's only)"
  chgrp kvm /dev/kvm
  chmod 0660 /dev/kvm
fi
ours=()
if virsh version >/dev/null 2>&1; then
  step "libvirtd runs"
elif [ -d /run/systemd/system ]; then
  step "starting libvirtd (systemd)"
  systemctl start virtlogd libvirtd
else
  step "starting virtlogd and libvirtd (no systemd: as daemons)"
  # (without the lock's descriptor: a daemon holding it would keep the next lab waiting)
  [ -S /run/libvirt/virtlogd-sock ] || { virtlogd -d 9>&-; ours=(virtlogd); }
  libvirtd -d 9>&-
  ours+=(libvirtd)            # stopped again at the end, unless OVSFOOT_KEEP=yes
  for _ in $(seq 100); do virsh version >/dev/null 2>&1 && break; sleep 0.2; done
  virsh version >/dev/null 2>&1 || die "libvirtd did not answer (see /var/log/libvirt/libvirtd.log)"
fi

# The box, added again when it was rebuilt: with the base volume vagrant-libvirt
# uploaded from the old one (it would boot that one otherwise).
base_volumes() { virsh vol-list default 2>/dev/null | awk '/ovsfoot-VAGRANTSLASH-bookworm_vagrant_box_image/ {print $1}'; }
inputs=$(cat "$BOX.inputs")
if vagrant box list | grep -q "^$NAME " && [ "$(cat "$BOX.added" 2>/dev/null)" = "$inputs" ]; then
  step "box $NAME already added (inputs $inputs)"
else
  step "adding box $NAME from $BOX"
  vagrant box add --force --name "$NAME" "$BOX" >/dev/null
  for v in $(base_volumes); do virsh vol-delete --pool default "$v" >/dev/null; done
  echo "$inputs" >"$BOX.added"
fi

# KVM or software emulation: the box's disk, booted with KVM (on a throw-away
# overlay), prints the kernel's first line on its serial console within seconds
# where KVM works; nested KVM that hangs prints nothing.
if [ -z "${OVSFOOT_LIBVIRT_DRIVER:-}" ]; then
  OVSFOOT_LIBVIRT_DRIVER=qemu
  disk=${VAGRANT_HOME:-$HOME/.vagrant.d}/boxes/${NAME//\//-VAGRANTSLASH-}/0/libvirt/box.img
  if [ -w /dev/kvm ] && [ "$(timeout 20 qemu-system-x86_64 -accel kvm -m 512 -nographic \
      -snapshot -drive "file=$disk,if=virtio" 2>&1 | grep -c -m1 "Linux version")" = 1 ]; then
    OVSFOOT_LIBVIRT_DRIVER=kvm
  fi
fi
export OVSFOOT_LIBVIRT_DRIVER
step "domain type $OVSFOOT_LIBVIRT_DRIVER ($( [ "$OVSFOOT_LIBVIRT_DRIVER" = kvm ] &&
  echo KVM works || echo 'software emulation: KVM does not work here'))"

destroy() {
  step "vagrant destroy -f"
  vagrant destroy -f >/dev/null
  local left
  left=$( { virsh list --all --name | grep '^vagrant_' || true
            virsh net-list --all --name | grep -v '^default$' | grep . || true
            virsh vol-list default 2>/dev/null | awk 'NR > 2 && $1 ~ /^vagrant_/ {print $1}'; } )
  [ -z "$left" ] || die "left behind after vagrant destroy: $left"
  step "nothing left: no domain, network or volume of the lab"
  local d
  for d in "${ours[@]}"; do
    pkill -F "/run/$d.pid" "$d" || true
    for _ in $(seq 50); do pgrep -F "/run/$d.pid" "$d" >/dev/null 2>&1 || break; sleep 0.2; done
  done
  [ ${#ours[@]} = 0 ] || step "stopped ${ours[*]} (started by this lab)"
}
if [ "${OVSFOOT_KEEP:-no}" != yes ]; then trap destroy EXIT; fi

machines=("$@")
[ $# -gt 0 ] || mapfile -t machines < <(echo central; seq -f "hv%g" "${OVSFOOT_CHASSIS:-2}")
step "vagrant up --no-provision: ${machines[*]} boot in parallel ($OVSFOOT_CPUS CPU, $OVSFOOT_MEMORY MiB each)"
# (without its upload progress, a line per percent)
vagrant up --provider=libvirt --no-provision "${machines[@]}" |
  sed -u 's/\r/\n/g' | grep --line-buffered -v 'Progress: '
for m in "${machines[@]}"; do
  step "provisioning $m"
  vagrant provision "$m"
  case $m in
    central) units="ovn-northd ovsfoot-cluster-db" want="active active" ;;
    *) units="ovs-vswitchd ovn-controller ovsfoot-agent" want="active active active bpf" ;;
  esac
  # a chassis' agent answers once its source runs (bcc compiles for a minute under emulation)
  check="sudo systemctl is-active $units | paste -sd ' '
    [ $m = central ] || { for _ in \$(seq 300); do
      sudo ovs-appctl -t ovsfoot stats >/tmp/stats 2>&1 && break; sleep 1; done
      sed -n 's/^source source: *//p' /tmp/stats | grep . || cat /tmp/stats; }"
  got=$(vagrant ssh "$m" -c "$check" 2>/dev/null | tr -s '\r\n' '  ' | sed 's/ *$//')
  step "$m: $units: $got"
  [ "$got" = "$want" ] || die "$m: expected \"$want\" (a chassis: the eBPF source): see" \
    "\`vagrant ssh $m -c 'sudo journalctl -u ${units// / -u }'\` (OVSFOOT_KEEP=yes keeps the VMs)"
done
if [[ " ${machines[*]} " == *" hv1 "* && " ${machines[*]} " == *" hv2 "* ]]; then
  step "the experiment across the VMs"
  ./experiment.sh
fi
step "done"
