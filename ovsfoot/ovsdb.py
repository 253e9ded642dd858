"""The local Open_vSwitch database through python-ovs's IDL.

The schema is fetched from the server itself, so the IDL matches whatever
OVS version runs on the node; the IDL reconnects and resynchronises on its own.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import time

import ovs.db.idl
import ovs.dirs
import ovs.jsonrpc
import ovs.poller
import ovs.stream
import ovs.util

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


ATTEMPT_S = 5.0         # one attempt to reach a server that is not there (or hung)
STILL_WAITING_S = 60.0  # how often the agent says it is still waiting
_LEAST_S = 0.05         # no attempt with less time than this, but the first


def fetch_schema(remote: str, db: str, timeout_ms: int = 5000) -> dict:
    """The schema of `db` as the server at `remote` has it (raises OSError).

    `remote` may list several servers (a cluster), separated by commas: all are
    asked at once and the first schema wins, so that a member that is down, hung
    or unroutable costs nothing while another answers. Connecting and the reply
    together take at most `timeout_ms` (then OSError ETIMEDOUT), whatever the
    servers do.
    """
    deadline = time.monotonic() + max(0, timeout_ms) / 1000
    fetches = [_SchemaFetch(one.strip(), db) for one in remote.split(",") if one.strip()]
    if not fetches:
        raise OSError(errno.EINVAL, f"no OVSDB remote in {remote!r}")
    try:
        while True:
            for f in fetches:
                f.run()
                if f.schema is not None:
                    return f.schema
            pending = [f for f in fetches if f.error is None]
            if not pending:
                errors = [f.error for f in fetches]
                raise errors[0] if len(errors) == 1 else OSError(
                    errors[-1].errno, "; ".join(e.strerror for e in errors))
            left = deadline - time.monotonic()
            if left <= 0:
                silent = ", ".join(f.remote + ("" if f.rpc else " (connecting)")
                                   for f in pending)
                raise OSError(errno.ETIMEDOUT, "; ".join(
                    [f.error.strerror for f in fetches if f.error is not None]
                    + [f"no answer from {silent} within {timeout_ms / 1000:g} s"]))
            poller = ovs.poller.Poller()
            for f in pending:
                f.wait(poller)
            poller.timer_wait(max(1, math.ceil(left * 1000)))
            poller.block()
    finally:
        for f in fetches:
            f.close()


class _SchemaFetch:
    """One server's get_schema, without ever blocking: run() and wait() it."""

    def __init__(self, remote: str, db: str):
        self.remote, self.db = remote, db
        self.schema: dict | None = None
        self.error: OSError | None = None
        self.rpc: ovs.jsonrpc.Connection | None = None
        self.request = None
        err, self.stream = ovs.stream.Stream.open(remote)
        if err:
            self._fail(err, f"cannot connect to {remote}")

    def _fail(self, err: int, what: str) -> None:
        """Gives up on this server: `what` failed with `err` (0: `what` says it all)."""
        if err:
            what = f"{what}: {ovs.util.ovs_retval_to_string(err)}"
        self.error = OSError(errno.EIO if err <= 0 else err, what)
        self.close()

    def run(self) -> None:
        if self.error is not None or self.schema is not None:
            return
        if self.rpc is None:
            err = self.stream.connect()
            if err == errno.EAGAIN:
                self.stream.run()
                return
            if err:
                self._fail(err, f"cannot connect to {self.remote}")
                return
            self.rpc = ovs.jsonrpc.Connection(self.stream)
            self.stream = None
            self.request = ovs.jsonrpc.Message.create_request("get_schema", [self.db])
            err = self.rpc.send(self.request)
            if err:
                self._fail(err, f"get_schema from {self.remote}")
                return
        self.rpc.run()
        while True:
            err, msg = self.rpc.recv()
            if err == errno.EAGAIN:
                return
            if err:
                self._fail(err, f"get_schema from {self.remote}")
                return
            if msg.type in (msg.T_REPLY, msg.T_ERROR) and msg.id == self.request.id:
                if msg.error is not None:
                    self._fail(0, f"{self.remote} has no database {self.db}: {msg.error}")
                else:
                    self.schema = msg.result
                return

    def wait(self, poller) -> None:
        if self.rpc is None:
            self.stream.run_wait(poller)
            self.stream.connect_wait(poller)
        else:
            self.rpc.wait(poller)
            self.rpc.recv_wait(poller)

    def close(self) -> None:
        if self.rpc is not None:
            self.rpc.close()
            self.rpc = None
        if self.stream is not None:
            self.stream.close()
            self.stream = None


def open_idl(remote: str, db: str, tables: dict[str, list[str]],
             retry: float = 1.0, timeout: float | None = None) -> ovs.db.idl.Idl:
    """An IDL for `tables` of `db`, waiting for the server to come up.

    `timeout` (seconds) bounds all of it, at least one attempt (OSError when
    exceeded). None: waits as long as it takes (the agent, which has nothing to
    do without its database), each attempt at most ATTEMPT_S, and says so in the log.
    """
    started = time.monotonic()
    deadline = None if timeout is None else started + max(0.0, timeout)
    next_note = None
    while True:
        budget = ATTEMPT_S if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            schema = fetch_schema(remote, db, int(budget * 1000))
            break
        except OSError as e:
            now = time.monotonic()
            if deadline is not None and deadline - now < 2 * _LEAST_S:
                raise
            if deadline is None and (next_note is None or now >= next_note):
                if next_note is None:
                    log.warning("waiting for ovsdb-server: %s (is it running? set --db or "
                                "OVS_RUNDIR)", e.strerror or e)
                else:
                    log.warning("still waiting for ovsdb-server after %.0f s: %s",
                                now - started, e.strerror or e)
                next_note = now + STILL_WAITING_S
            time.sleep(retry if deadline is None else min(retry, deadline - now - _LEAST_S))
    if next_note is not None:
        log.info("ovsdb-server at %s answered after %.0f s", remote, time.monotonic() - started)
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
