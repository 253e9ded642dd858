"""The local Open_vSwitch database through python-ovs's IDL.

The schema is fetched from the server itself, so the IDL matches whatever
OVS version runs on the node; the IDL reconnects and resynchronises on its own.
"""

from __future__ import annotations

import logging
import os
import time

import ovs.db.idl
import ovs.dirs
import ovs.jsonrpc
import ovs.poller
import ovs.stream

log = logging.getLogger(__name__)

TABLES = {
    "Open_vSwitch": ["external_ids"],
    "Bridge": ["name", "external_ids"],
    "Interface": ["name", "external_ids"],
}


def default_remote() -> str:
    """The OVS run directory's db.sock (honours OVS_RUNDIR)."""
    return "unix:" + os.path.join(os.environ.get("OVS_RUNDIR", ovs.dirs.RUNDIR), "db.sock")


def configure_ssl(private_key: str | None, certificate: str | None,
                  ca_cert: str | None) -> None:
    """Credentials for every ssl: remote of this process, as OVS daemons take them
    (--private-key, --certificate, --ca-cert); all three or none."""
    given = [f for f in (private_key, certificate, ca_cert) if f]
    if not given:
        return
    if len(given) != 3:
        raise ValueError("SSL needs all of --private-key, --certificate and --ca-cert")
    for f in given:
        if not os.access(f, os.R_OK):
            raise ValueError(f"cannot read SSL file {f}")
    ovs.stream.Stream.ssl_set_private_key_file(private_key)
    ovs.stream.Stream.ssl_set_certificate_file(certificate)
    ovs.stream.Stream.ssl_set_ca_cert_file(ca_cert)


def ssl_ready(remote: str) -> bool:
    """False if `remote` names an ssl: server but no SSL credentials are configured."""
    needs = any(r.strip().startswith("ssl:") for r in remote.split(","))
    return not needs or bool(ovs.stream.Stream._SSL_ca_cert_file)


def fetch_schema(remote: str, db: str, timeout_ms: int = 5000) -> dict:
    """The schema of `db` as the server at `remote` has it (raises OSError).

    `remote` may list several servers (a cluster), separated by commas.
    """
    errors = []
    for one in remote.split(","):
        try:
            return _fetch_schema(one, db, timeout_ms)
        except OSError as e:
            errors.append(e)
    raise errors[-1] if len(errors) == 1 else OSError(
        0, "; ".join(str(e.strerror or e) for e in errors))


def _fetch_schema(remote: str, db: str, timeout_ms: int) -> dict:
    err, stream = ovs.stream.Stream.open_block(ovs.stream.Stream.open(remote), timeout_ms)
    if err:
        raise OSError(err, f"cannot connect to {remote}: {os.strerror(err)}")
    rpc = ovs.jsonrpc.Connection(stream)
    try:
        err, reply = rpc.transact_block(ovs.jsonrpc.Message.create_request("get_schema", [db]))
        if err:
            raise OSError(err, f"get_schema from {remote}: {os.strerror(err)}")
        if reply.error:
            raise OSError(0, f"{remote} has no database {db}: {reply.error}")
        return reply.result
    finally:
        rpc.close()


def open_idl(remote: str, db: str, tables: dict[str, list[str]],
             retry: float = 1.0, timeout: float | None = None) -> ovs.db.idl.Idl:
    """An IDL for `tables` of `db`, waiting for the server to come up
    (`timeout` 0: one try only)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    warned = False
    while True:
        try:
            schema = fetch_schema(remote, db, 5000 if timeout is None else
                                  max(500, int(timeout * 1000)))
            break
        except OSError as e:
            if deadline is not None and time.monotonic() >= deadline:
                raise
            if not warned:
                log.warning("waiting for ovsdb-server: %s (is it running? set --db or "
                            "OVS_RUNDIR)", e.strerror or e)
                warned = True
            time.sleep(retry)
    helper = ovs.db.idl.SchemaHelper(schema_json=schema)
    for table, columns in tables.items():
        helper.register_columns(table, columns)
    return ovs.db.idl.Idl(remote, helper, leader_only=False)


class LocalDb:
    """Bridges, Interfaces and the root row of the local Open_vSwitch database."""

    def __init__(self, remote: str | None = None, timeout: float | None = None):
        self.remote = remote or default_remote()
        self.idl = open_idl(self.remote, "Open_vSwitch", TABLES, timeout=timeout)
        self._seqno = None

    def run(self) -> bool:
        """Processes what the server sent; True if the replica changed."""
        self.idl.run()
        changed = self.idl.change_seqno != self._seqno
        self._seqno = self.idl.change_seqno
        return changed

    def wait(self, poller) -> None:
        self.idl.wait(poller)

    def rows(self, table: str):
        return self.idl.tables[table].rows.values()

    def bridge(self, name: str):
        return next((b for b in self.rows("Bridge") if b.name == name), None)

    def root(self):
        return next(iter(self.rows("Open_vSwitch")), None)
