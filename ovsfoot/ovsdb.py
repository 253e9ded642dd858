"""The local Open_vSwitch database through python-ovs's IDL.

The schema is fetched from the server itself, so the IDL matches whatever
OVS version runs on the node; the IDL reconnects and resynchronises on its own.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import socket
import ssl
import time

import _ssl

import ovs.db.custom_index
import ovs.db.idl
import ovs.dirs
import ovs.jsonrpc
import ovs.poller
import ovs.socket_util
import ovs.stream
import ovs.util

from ovsfoot.contract import OUTPUT_KEYS

log = logging.getLogger(__name__)

TABLES = {
    "Open_vSwitch": ["external_ids"],
    "Bridge": ["name", "external_ids"],
    "Interface": ["name", "external_ids"],
}
_OTHER_COLUMNS = {c for columns in TABLES.values() for c in columns} - {"external_ids"}


def default_remote() -> str:
    """The OVS run directory's db.sock (honours OVS_RUNDIR)."""
    return "unix:" + os.path.join(os.environ.get("OVS_RUNDIR", ovs.dirs.RUNDIR), "db.sock")


class _SslConfig:
    """What configure_ssl() was given: file names, read again at each connection."""
    private_key: str | None = None
    certificate: str | None = None
    ca_cert: str | None = None
    bootstrap = False       # ca_cert is --bootstrap-ca-cert: fetched from the server if absent


SSL = _SslConfig()
SSL_RENOTE_S = 60.0         # how often a problem that persists is said again
_ssl_notes: dict[str, tuple[str, float]] = {}    # remote: (problem, when said)
_ssl_contexts: dict[tuple, ssl.SSLContext] = {}


def configure_ssl(private_key: str | None, certificate: str | None,
                  ca_cert: str | None, bootstrap_ca_cert: str | None = None) -> None:
    """Credentials for every ssl: remote of this process, as OVS daemons take them
    (--private-key, --certificate, --ca-cert or --bootstrap-ca-cert).

    Never fails on the files themselves: they are read at each connection
    attempt, so that a missing, unreadable or wrong file is a log line and a
    retry (`ssl_problem()` says what), and a fixed one is taken without a restart.
    """
    if ca_cert and bootstrap_ca_cert and ca_cert != bootstrap_ca_cert:
        raise ValueError("give --ca-cert or --bootstrap-ca-cert, not both")
    ca = bootstrap_ca_cert or ca_cert
    SSL.private_key, SSL.certificate, SSL.ca_cert = private_key, certificate, ca
    SSL.bootstrap = bool(bootstrap_ca_cert)
    # python-ovs's own variables too, for code that looks at them
    ovs.stream.Stream.ssl_set_private_key_file(private_key)
    ovs.stream.Stream.ssl_set_certificate_file(certificate)
    ovs.stream.Stream.ssl_set_ca_cert_file(ca)
    if (private_key or certificate or ca) and (missing := _missing_options()):
        log.warning("SSL remotes will not connect: %s", missing)


def _files() -> tuple[str | None, str | None, str | None, bool]:
    """private key, certificate, CA certificate, bootstrap: as configure_ssl() set them."""
    return SSL.private_key, SSL.certificate, SSL.ca_cert, SSL.bootstrap


def _missing_options() -> str | None:
    key, cert, ca, _ = _files()
    missing = [o for o, v in (("--private-key", key), ("--certificate", cert),
                              ("--ca-cert (or --bootstrap-ca-cert)", ca)) if not v]
    if not missing:
        return None
    return "SSL needs " + ", ".join(missing)


def ssl_ready(remote: str) -> bool:
    """False if `remote` names an ssl: server but the SSL options are incomplete."""
    needs = any(r.strip().startswith("ssl:") for r in remote.split(","))
    return not needs or _missing_options() is None


def ssl_problem(remote: str) -> str | None:
    """Why the last SSL connection to (one of) `remote` failed; None once it worked."""
    for one in remote.split(","):
        note = _ssl_notes.get(one.strip())
        if note:
            return f"{one.strip()}: {note[0]}"
    return None


def _note(remote: str, problem: str | None) -> None:
    """Logs an SSL `problem` of `remote` when it is new, then every SSL_RENOTE_S;
    None: the connection works (said if there was a problem)."""
    now = time.monotonic()
    last = _ssl_notes.get(remote)
    if problem is None:
        if last is not None:
            del _ssl_notes[remote]
            log.info("%s: SSL connection established", remote)
        return
    if last is None or last[0] != problem or now - last[1] >= SSL_RENOTE_S:
        log.warning("%s: %s; retrying", remote, problem)
        _ssl_notes[remote] = (problem, now)


def _ssl_reason(e: Exception) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"the server's certificate is not trusted: {e.verify_message}"
    if isinstance(e, ssl.SSLError):
        return f"SSL error: {e.reason or e}" + (f" ({e.library})" if e.library else "")
    return str(e)


def _context(bootstrapping: bool) -> ssl.SSLContext:
    """A client context from the configured files (cached while they do not change);
    raises ValueError saying which file is wrong."""
    missing = _missing_options()
    if missing:
        raise ValueError(missing)
    private_key, certificate, ca_cert, _ = _files()
    files = [("--private-key", private_key), ("--certificate", certificate)]
    if not bootstrapping:
        files.append(("--ca-cert", ca_cert))
    key = [bootstrapping]
    for option, name in files:
        try:
            st = os.stat(name)
            with open(name, "rb"):
                pass
        except OSError as e:
            raise ValueError(f"cannot read {option} {name}: {e.strerror}") from None
        key.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
    key = tuple(key)
    ctx = _ssl_contexts.get(key)
    if ctx is not None:
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False      # as OVS: the CA is what is checked, not names
    if bootstrapping:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cafile=ca_cert)
        except (ssl.SSLError, OSError) as e:
            raise ValueError(f"--ca-cert {ca_cert} is not a CA certificate: "
                             f"{_ssl_reason(e)}") from None
    try:
        ctx.load_cert_chain(certificate, private_key)
    except (ssl.SSLError, OSError) as e:
        raise ValueError(f"--certificate {certificate} and --private-key "
                         f"{private_key} are not a certificate and its key: "
                         f"{_ssl_reason(e)}") from None
    _ssl_contexts.clear()
    _ssl_contexts[key] = ctx
    return ctx


def _bootstrap_ca(remote: str, sock: ssl.SSLSocket) -> None:
    """Saves the CA certificate the server sent at the end of its chain into the
    --bootstrap-ca-cert file (trust on first use, as OVS does); raises ValueError."""
    # (public as SSLSocket.get_unverified_chain from Python 3.13; before, on its SSLObject)
    get_chain = getattr(sock, "get_unverified_chain", None) or sock._sslobj.get_unverified_chain
    chain = get_chain() or []
    top = chain[-1] if chain else None
    info = top.get_info() if top is not None else {}
    if top is None or info.get("subject") != info.get("issuer"):
        raise ValueError("cannot bootstrap the CA certificate: the server sent none "
                         "(its ovsdb-server needs --peer-ca-cert)")
    pem = top.public_bytes(_ssl.ENCODING_PEM)
    path = SSL.ca_cert
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "x") as f:
            f.write(pem)
        os.link(tmp, path)          # never over a file that appeared meanwhile
    except FileExistsError:
        pass
    except OSError as e:
        raise ValueError(f"cannot write --bootstrap-ca-cert {path}: {e.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    subject = ",".join("=".join(kv) for rdn in info.get("subject", ()) for kv in rdn)
    log.info("%s: bootstrapped the CA certificate (%s) into %s; reconnecting with it",
             remote, subject, path)


class _SslStream(ovs.stream.SSLStream):
    """python-ovs's ssl: stream, for every OVSDB connection of the process, where a
    missing or bad credential, an untrusted server or a refused certificate is an
    errno (the IDL or jsonrpc session retries) and a log line, never an exception;
    and --bootstrap-ca-cert."""

    @staticmethod
    def _open(suffix, dscp):
        remote = "ssl:" + suffix
        _, _, ca_cert, bootstrap = _files()
        bootstrapping = bool(bootstrap and ca_cert and not os.path.exists(ca_cert))
        try:
            ctx = _context(bootstrapping)
            address = ovs.socket_util.inet_parse_active(suffix, 0)
        except ValueError as e:
            _note(remote, str(e))
            return errno.EPROTO, None
        family, sock = ovs.socket_util.inet_create_socket_active(socket.SOCK_STREAM, address)
        if sock is None:
            return family, sock
        ssl_sock = ctx.wrap_socket(sock, do_handshake_on_connect=False)
        error = ovs.socket_util.inet_connect_active(ssl_sock, address, family, dscp)
        if not error:
            try:
                ssl_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as e:
                ssl_sock.close()
                return ovs.socket_util.get_exception_errno(e), None
        return error, ssl_sock

    def __init__(self, sock, *args, **kwargs):
        super().__init__(sock, *args, **kwargs)
        # a context that checks nothing is only made to bootstrap the CA certificate
        self.bootstrapping = sock is not None and sock.context.verify_mode == ssl.CERT_NONE
        self.handshaken = False

    def connect(self):
        try:
            retval = ovs.stream.Stream.connect(self)
            if retval or self.handshaken:
                return retval
            self.socket.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return errno.EAGAIN
        except ssl.SSLSyscallError as e:
            return ovs.socket_util.get_exception_errno(e)
        except ssl.SSLError as e:
            _note(self.name, _ssl_reason(e))
            return errno.EPROTO
        self.handshaken = True
        if self.bootstrapping:
            try:
                _bootstrap_ca(self.name, self.socket)
            except ValueError as e:
                _note(self.name, str(e))
            return errno.EPROTO     # as OVS: the next connection checks the server with it
        return 0

    def recv(self, n):
        try:
            retval = ovs.stream.Stream._recv(self, n)
        except ssl.SSLWantReadError:
            return (errno.EAGAIN, "")
        except ssl.SSLSyscallError as e:
            return (ovs.socket_util.get_exception_errno(e), "")
        except ssl.SSLZeroReturnError:
            return (0, "")
        except ssl.SSLError as e:       # e.g. the server refused our certificate
            _note(self.name, "the server refused the connection: " + _ssl_reason(e))
            return (errno.EPROTO, "")
        except OSError as e:
            return (ovs.socket_util.get_exception_errno(e), "")
        if retval[0] == 0 and retval[1]:
            _note(self.name, None)      # it answered: credentials and server are fine
        return retval

    def send(self, buf):
        try:
            return ovs.stream.Stream._send(self, buf)
        except ssl.SSLWantWriteError:
            return -errno.EAGAIN
        except ssl.SSLSyscallError as e:
            return -ovs.socket_util.get_exception_errno(e)
        except ssl.SSLError as e:
            _note(self.name, "the server refused the connection: " + _ssl_reason(e))
            return -errno.EPROTO
        except OSError as e:
            return -ovs.socket_util.get_exception_errno(e)


# Every process that uses this module (agent, extender, ovsfoot-cni, api.Node) gets it.
ovs.stream.Stream.register_method("ssl", _SslStream)


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
            why = _ssl_notes.get(self.remote)
            what = f"{what}: {why[0] if why else ovs.util.ovs_retval_to_string(err)}"
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
             retry: float = 1.0, timeout: float | None = None, cls: type[Idl] | None = None
             ) -> Idl:
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
    return make_idl(remote, schema, tables, cls or Idl)


class Idl(ovs.db.idl.Idl):
    """python-ovs's Idl, less a busy loop: its wait() wakes at once while a
    condition change is pending, also when there is no connection to send it on,
    so that a client with conditions spins a core until the server comes back
    (python-ovs 3.1). Here it waits for the connection, as without conditions."""

    def wait(self, poller) -> None:
        if self.cond_changed and not self._session.is_connected():
            self._session.wait(poller)
        else:
            super().wait(poller)


def make_idl(remote: str, schema: dict | str, tables: dict[str, list[str]] | None,
             cls: type[Idl] = Idl) -> Idl:
    """An IDL of `cls` for `tables` (table: columns; None: all) of `schema`, a
    schema's JSON or the path of an .ovsschema. Connects as it runs: never blocks."""
    helper = (ovs.db.idl.SchemaHelper(location=schema) if isinstance(schema, str)
              else ovs.db.idl.SchemaHelper(schema_json=schema))
    if tables is None:
        helper.register_all()
    for table, columns in (tables or {}).items():
        helper.register_columns(table, columns)
    return cls(remote, helper, leader_only=False)


class ClusterIdl(Idl):
    """An Idl for a raft database read by many clients (the cluster view).

    python-ovs monitors every column of `_Server.Database`, `index` included,
    which each member bumps on every commit: each client then receives the whole
    row, schema and all (3.2 KB), per transaction of the whole cluster, a cost
    that grows with the square of the number of chassis (bench/clusterdb_scale.py).
    This leaves `index` out: a client hears from `_Server` only when a member's
    role or connection changes. It gives up python-ovs's check that a reconnection
    did not land on a member with older data; the cluster view is rewritten by its
    owners at least every heartbeat, so that costs a few seconds at most."""

    def is_connected(self) -> bool:
        """Connected to a member now (python-ovs 3.1's Idl does not say)."""
        return self._session.is_connected()

    def received_bytes(self) -> int:
        """Bytes received on the current connection (0 between connections)."""
        rpc = self._session.rpc
        return rpc.get_received_bytes() if rpc is not None else 0

    def _Idl__send_server_monitor_request(self):       # python-ovs 3.1's, less `index`
        self.state = self.IDL_S_SERVER_MONITOR_REQUESTED
        table = self.server_tables[self._server_db_table]
        for column in table.columns.values():
            if not hasattr(column, "alert"):
                column.alert = True
        table.rows = ovs.db.custom_index.IndexedRows(table)
        table.need_table = False
        table.idl = self
        msg = ovs.jsonrpc.Message.create_request(
            "monitor", [self._server_db.name, str(self.server_monitor_uuid),
                        {table.name: [{"columns": [c for c in table.columns
                                                   if c != "index"]}]}])
        self._server_monitor_request_id = msg.id
        self.send_request(msg)


class VswitchIdl(Idl):
    """An Idl of the local database that counts the changes that were ovsfoot's own
    writes: rows whose only change is in ovsfoot's output keys (`own_changes`;
    python-ovs adds one to `change_seqno` per changed row, and more when it clears
    the replica on a reconnection)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.own_changes = 0

    def notify(self, event, row, updates=None) -> None:
        if event == ovs.db.idl.ROW_UPDATE and updates is not None \
                and _only_output_keys(row, updates):
            self.own_changes += 1


def _only_output_keys(row, old) -> bool:
    """Did `row` change in ovsfoot's output keys alone? `old`: python-ovs's row of the
    old values of the changed columns only."""
    if any(hasattr(old, c) for c in _OTHER_COLUMNS) or \
            not hasattr(old, "external_ids"):
        return False
    before, after = old.external_ids, row.external_ids
    return all(before.get(k) == after.get(k) for k in before.keys() | after.keys()
               if k not in OUTPUT_KEYS)


class LocalDb:
    """Bridges, Interfaces and the root row of the local Open_vSwitch database."""

    def __init__(self, remote: str | None = None, timeout: float | None = None):
        self.remote = remote or default_remote()
        self.idl = open_idl(self.remote, "Open_vSwitch", TABLES, timeout=timeout,
                            cls=VswitchIdl)
        self._seen = (None, 0)      # change_seqno, own_changes

    def run(self) -> bool:
        """Processes what the server sent; True if the replica changed other than in
        ovsfoot's output keys (the agent's own publications change nothing it reads)."""
        self.idl.run()
        seqno, own = self.idl.change_seqno, self.idl.own_changes
        last_seqno, last_own = self._seen
        self._seen = (seqno, own)
        return last_seqno is None or seqno - last_seqno != own - last_own

    def wait(self, poller) -> None:
        self.idl.wait(poller)

    def rows(self, table: str):
        return self.idl.tables[table].rows.values()

    def bridge(self, name: str):
        return next((b for b in self.rows("Bridge") if b.name == name), None)

    def root(self):
        return next(iter(self.rows("Open_vSwitch")), None)
