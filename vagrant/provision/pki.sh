#!/bin/bash
# The PKI of ovsfoot's cluster database: a CA, and for each NAME a private key
# and a certificate signed by that CA, with CN=NAME. The members of the cluster
# database present theirs to each other and to clients; a chassis' CN must be
# its name (external_ids:system-id), because the database's RBAC lets a chassis
# write only the rows that carry its name (and refuses a client without a
# certificate). In DIR: cacert.pem (give it to everyone), cakey.pem (keep it),
# NAME-privkey.pem and NAME-cert.pem. Existing files are kept.
# Runs where the keys are made: on the Vagrant host (a trigger of the
# Vagrantfile), or on the one machine of a lab.
USAGE="pki.sh --dir DIR NAME..."
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "$0")/common.sh"
DIR=""
parse_args "dir" "$@"
if [ -z "$DIR" ] || [ ${#POS[@]} -eq 0 ]; then usage_exit; fi
need openssl:openssl flock:util-linux
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
# One at a time: `vagrant up` runs this trigger once per machine, and in parallel
# (libvirt), so three would each make a CA and sign with another's key.
exec 9>"$DIR/.lock"
flock 9
umask 077                                  # the private keys

if [ -e "$DIR/cacert.pem" ]; then
  step "CA already there ($DIR/cacert.pem)"
else
  step "creating the CA in $DIR"
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -keyout "$DIR/cakey.pem" \
    -out "$DIR/cacert.pem.tmp" -subj "/O=ovsfoot/CN=ovsfoot cluster database CA" 2>/dev/null
  mv "$DIR/cacert.pem.tmp" "$DIR/cacert.pem"
fi
chmod 644 "$DIR/cacert.pem"

for name in "${POS[@]}"; do
  [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "bad name '$name' (letters, digits, . _ -)"
  key=$DIR/$name-privkey.pem cert=$DIR/$name-cert.pem
  if [ -e "$cert" ] && [ -e "$key" ]; then
    step "$name: certificate already there"
    continue
  fi
  step "$name: private key and certificate (CN=$name)"
  openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$key" -out "$DIR/$name-req.pem" \
    -subj "/O=ovsfoot/CN=$name" 2>/dev/null
  openssl x509 -req -sha256 -days 3650 -in "$DIR/$name-req.pem" -CA "$DIR/cacert.pem" \
    -CAkey "$DIR/cakey.pem" -CAcreateserial -CAserial "$DIR/ca.srl" -out "$cert.tmp" 2>/dev/null
  mv "$cert.tmp" "$cert"
  chmod 644 "$cert"
  rm -f "$DIR/$name-req.pem"
done
