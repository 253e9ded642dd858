"""ovsfoot's own clustered OVSDB for the cluster view (`ovsfoot cluster-db`).

Three raft members, each in its own network namespace, started with the command
operators run; chassis connect over SSL with certificates whose CN is their name,
and the RBAC role that `cluster-db start` installs lets each write only its own rows.
"""

import json
import socket
import ssl
import time

import ovs.db.idl
import pytest

from integration.clusterdb import DB, ClusterDbSandbox
from ovsfoot.contract import cluster_schema_path
from ovsfoot.ovsdb import ClusterIdl, configure_ssl
from integration.sandbox import sh, wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    sb = ClusterDbSandbox(tmp_path_factory.mktemp("clusterdb"), members=3, ssl=True)
    try:
        sb.start()
        yield sb
    finally:
        sb.destroy()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def chassis_row(name, **kw):
    row = {"name": name, "hostname": f"{name}.example", "footprint": "light",
           "elephants": 0, "heavy_ports": 0, "updated": now_ms()}
    return {**row, **kw}


def insert(table, row):
    return {"op": "insert", "table": table, "row": row}


def errors(result) -> list[str]:
    return [f"{r['error']}: {r.get('details', '')}" for r in result
            if isinstance(r, dict) and "error" in r]


def assert_rbac_denied(result):
    errs = errors(result)
    assert errs, f"expected an RBAC refusal, got {result}"
    assert "permission error" in errs[0] and "RBAC" in errs[0], errs


def by(rows, **match):
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def test_cluster_forms_and_chassis_writes_its_own_rows(cluster):
    statuses = [cluster.status(i) for i in range(3)]
    assert all("Status: cluster member" in s for s in statuses), statuses
    assert [cluster.servers(i) for i in range(3)] == [3, 3, 3]
    assert sum("Role: leader" in s for s in statuses) == 1
    assert all(f"Address: ssl:{m.ip}:6648" in s for m, s in zip(cluster.members, statuses))
    # What the first member's `cluster-db start` installed.
    (conn,) = cluster.rows("Connection")
    assert conn["target"] == "pssl:6647" and conn["role"] == "ovsfoot-chassis"
    (glob,) = cluster.rows("Cluster_Global")
    assert glob["connections"] == conn["_uuid"]
    (role,) = cluster.rows("RBAC_Role")
    assert role["name"] == "ovsfoot-chassis"

    result = cluster.transact("hv-a", [
        insert("Chassis", chassis_row("hv-a", footprint="heavy", elephants=2, heavy_ports=1)),
        insert("Workload_Class", {"workload": "shop/web", "chassis": "hv-a", "learned": "heavy",
                                  "score": 3.5, "updated": now_ms()})])
    assert not errors(result), result
    (a,) = by(cluster.rows("Chassis"), name="hv-a")
    assert (a["footprint"], a["elephants"], a["heavy_ports"]) == ("heavy", 2, 1)
    (w,) = by(cluster.rows("Workload_Class"), chassis="hv-a")
    assert (w["workload"], w["learned"], w["score"]) == ("shop/web", "heavy", 3.5)
    # hv-a updates its own row: the columns of the role's update list.
    result = cluster.transact("hv-a", [{"op": "update", "table": "Chassis",
                                        "where": [["name", "==", "hv-a"]],
                                        "row": {"elephants": 3, "updated": now_ms()}}])
    assert not errors(result) and result[0]["count"] == 1, result


def test_chassis_cannot_touch_another_chassis_rows(cluster):
    wait_for(lambda: by(cluster.rows("Chassis"), name="hv-a"), what="hv-a's row")
    # Modify hv-a's row.
    assert_rbac_denied(cluster.transact("hv-b", [{
        "op": "update", "table": "Chassis", "where": [["name", "==", "hv-a"]],
        "row": {"footprint": "light", "elephants": 0}}]))
    # Insert a row that claims to be hv-a.
    assert_rbac_denied(cluster.transact("hv-b", [insert("Chassis", chassis_row("hv-a"))]))
    assert_rbac_denied(cluster.transact("hv-b", [insert("Workload_Class", {
        "workload": "shop/db", "chassis": "hv-a", "learned": "heavy", "score": 9.0,
        "updated": now_ms()})]))
    # Delete what hv-a learned.
    assert_rbac_denied(cluster.transact("hv-b", [{
        "op": "delete", "table": "Workload_Class", "where": [["chassis", "==", "hv-a"]]}]))
    # Nor may a chassis rename its own row into another's, or touch the RBAC tables.
    assert_rbac_denied(cluster.transact("hv-a", [{
        "op": "update", "table": "Chassis", "where": [["name", "==", "hv-a"]],
        "row": {"name": "hv-c"}}]))
    assert_rbac_denied(cluster.transact("hv-b", [{
        "op": "delete", "table": "RBAC_Role", "where": []}]))
    (a,) = by(cluster.rows("Chassis"), name="hv-a")
    assert a["footprint"] == "heavy" and a["elephants"] == 3
    assert len(by(cluster.rows("Workload_Class"), chassis="hv-a", workload="shop/web")) == 1
    assert not by(cluster.rows("Workload_Class"), chassis="hv-a", workload="shop/db")

    # hv-b writes, updates and deletes its own.
    result = cluster.transact("hv-b", [
        insert("Chassis", chassis_row("hv-b")),
        insert("Workload_Class", {"workload": "shop/web", "chassis": "hv-b", "learned": "light",
                                  "score": 0.5, "updated": now_ms()}),
        insert("Workload_Class", {"workload": "tmp/job", "chassis": "hv-b", "learned": "light",
                                  "score": 0.0, "updated": now_ms()})])
    assert not errors(result), result
    result = cluster.transact("hv-b", [
        {"op": "update", "table": "Workload_Class", "where": [["chassis", "==", "hv-b"],
                                                              ["workload", "==", "shop/web"]],
         "row": {"learned": "heavy", "score": 3.0}},
        {"op": "delete", "table": "Workload_Class", "where": [["chassis", "==", "hv-b"],
                                                              ["workload", "==", "tmp/job"]]}])
    assert not errors(result) and [r["count"] for r in result] == [1, 1], result
    assert {(r["workload"], r["learned"]) for r in by(cluster.rows("Workload_Class"),
                                                     chassis="hv-b")} == {("shop/web", "heavy")}


def test_no_certificate_no_data(cluster):
    m = cluster.members[0]
    key, cert, ca = cluster.client_creds("hv-a")
    assert DB in cluster.client("list-dbs", m.remote, creds=(key, cert, ca))    # the baseline
    # ovsdb-client without a key of its own.
    out = sh("ovsdb-client", "--timeout=5", f"--ca-cert={ca}", "dump", m.remote, DB,
             check=False, timeout=15)
    assert "hv-a" not in out
    with pytest.raises(RuntimeError, match="(?i)private key|certificate|ssl"):
        sh("ovsdb-client", "--timeout=5", f"--ca-cert={ca}", "dump", m.remote, DB, timeout=15)
    # A TLS client that trusts the cluster's CA but has no certificate: the member
    # ends the connection before it answers anything.
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    request = json.dumps({"id": 1, "method": "transact", "params": [
        DB, {"op": "select", "table": "Chassis", "where": []}]}).encode()
    received = b""
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        with socket.create_connection((m.ip, 6647), timeout=5) as raw:
            with ctx.wrap_socket(raw) as tls:      # TLS 1.3: the refusal comes on read
                tls.sendall(request)
                while chunk := tls.recv(65536):
                    received += chunk
                raise ConnectionError("closed")
    assert b"hv-a" not in received and b"result" not in received
    # A certificate named hv-a, from another CA.
    foreign = cluster.foreign_creds("hv-a")
    with pytest.raises(RuntimeError):
        cluster.client("dump", m.remote, DB, creds=foreign, timeout=5)
    with pytest.raises(RuntimeError):
        cluster.client("transact", m.remote, json.dumps([DB, {
            "op": "delete", "table": "Chassis", "where": [["name", "==", "hv-a"]]}]),
            creds=foreign, timeout=5)
    assert by(cluster.rows("Chassis"), name="hv-a")
    # The member refused both for the right reason (OpenSSL's words).
    log = (m.dir / "ovsdb-server.log").read_text()
    assert "peer did not return a certificate" in log
    assert "certificate verify failed" in log


def test_command_line_remote_has_no_role(cluster):
    """Why the chassis remote is a Connection row: ovsdb-server (3.1) gives a role
    only to remotes read from the database, a --remote (or add-remote) has none."""
    i = cluster.leader()
    m = cluster.members[i]
    port = 6649
    sh("ovs-appctl", "-t", m.ctl, "ovsdb-server/add-remote", f"pssl:{port}:{m.ip}")
    try:
        remote = f"ssl:{m.ip}:{port}"
        wait_for(lambda: DB in cluster.client("list-dbs", remote, check=False,
                                              creds=cluster.client_creds("hv-b"), timeout=5),
                 what="the extra remote")
        result = cluster.transact("hv-b", [insert("Chassis", chassis_row("hv-z"))],
                                  remote=remote)
        assert not errors(result), result          # no role: RBAC does not apply
        result = cluster.transact("hv-b", [insert("Chassis", chassis_row("hv-y"))])
        assert_rbac_denied(result)                 # the same client through the Connection
    finally:
        sh("ovs-appctl", "-t", m.ctl, "ovsdb-server/remove-remote", f"pssl:{port}:{m.ip}")
        cluster.transact(None, [{"op": "delete", "table": "Chassis",
                                 "where": [["name", "==", "hv-z"]]}])


def test_reads_through_a_relay(cluster):
    relay = cluster.relay("relay-reader")
    rows = wait_for(lambda: by(cluster.rows("Chassis", remote=relay), name="hv-a"),
                    what="hv-a's Chassis row through the relay")
    assert rows[0]["footprint"] == "heavy"
    assert by(cluster.rows("Workload_Class", remote=relay), chassis="hv-a",
              workload="shop/web")
    # A change made on the cluster reaches the relay's readers.
    stamp = now_ms()
    assert not errors(cluster.transact("hv-a", [{
        "op": "update", "table": "Chassis", "where": [["name", "==", "hv-a"]],
        "row": {"updated": stamp}}]))
    wait_for(lambda: by(cluster.rows("Chassis", remote=relay), name="hv-a", updated=stamp),
             what="the update through the relay")


def test_readers_do_not_hear_of_every_commit(cluster):
    """ClusterIdl leaves `_Server.Database.index` out of its server monitor: a member
    bumps it on every commit, and python-ovs's Idl would receive the whole row (3.2 KB)
    per cluster transaction. A plain Idl sees the index move; ClusterIdl does not."""
    key, cert, ca = cluster.client_creds("reader")
    configure_ssl(key, cert, ca)

    def idl(kind):
        helper = ovs.db.idl.SchemaHelper(location=cluster_schema_path())
        helper.register_columns("Chassis", ["name"])
        i = kind(cluster.members[0].remote, helper, leader_only=False)
        wait_for(lambda: (i.run(), i.has_ever_connected())[1], what="the IDL to connect")
        return i

    def index(i):
        rows = [r for r in i.server_tables["Database"].rows.values()
                if r.name == "OVSFoot_Cluster"]
        return rows[0].index
    plain, trimmed = idl(ovs.db.idl.Idl), idl(ClusterIdl)
    try:
        before = index(plain)
        for _ in range(3):
            assert not errors(cluster.transact("hv-a", [{
                "op": "update", "table": "Chassis", "where": [["name", "==", "hv-a"]],
                "row": {"updated": now_ms()}}]))
        wait_for(lambda: (plain.run(), index(plain) != before)[1],
                 what="the plain Idl to see the index move")
        trimmed.run()
        assert index(trimmed) == [] and index(plain)
    finally:
        plain.close()
        trimmed.close()


def test_leader_loss_loses_nothing(cluster):
    old = cluster.leader()
    assert old is not None
    cluster.stop_member(old)
    assert not cluster.running(old)
    new = wait_for(lambda: (x := cluster.leader()) is not None and x != old and (x,),
                   timeout=30, what="a new leader")[0]
    assert new != old
    (a,) = by(cluster.rows("Chassis"), name="hv-a")
    assert a["footprint"] == "heavy"
    assert by(cluster.rows("Workload_Class"), chassis="hv-a", workload="shop/web")
    # hv-a writes through the remaining members (the list includes the stopped one).
    result = cluster.transact("hv-a", [
        insert("Workload_Class", {"workload": "shop/cache", "chassis": "hv-a",
                                  "learned": "light", "score": 1.0, "updated": now_ms()})])
    assert not errors(result), result
    # The member comes back with the same command and catches up.
    cluster.start_member(old)
    wait_for(lambda: "Status: cluster member" in cluster.status(old)
             and cluster.servers(old) == 3, timeout=30, what="the member to rejoin")
    rows = wait_for(lambda: by(cluster.rows("Workload_Class", remote=cluster.members[old].admin),
                               chassis="hv-a", workload="shop/cache"),
                    what="the rejoined member to have hv-a's new row")
    assert rows[0]["learned"] == "light"
    assert cluster.leader() is not None


def test_without_ssl_chassis_can_write(tmp_path):
    """Without SSL no client has a name for RBAC to match: the chassis connection gets no
    role (with one, every write would be refused), and `cluster-db start` warns."""
    db = ClusterDbSandbox(tmp_path / "plain", members=1, ssl=False)
    try:
        db.start()
        remote = db.members[0].remote
        assert remote.startswith("tcp:")
        out = json.loads(db.client("transact", remote, json.dumps(
            [DB, insert("Chassis", chassis_row("hv-plain"))])))
        assert not errors(out), out
        assert by(db.rows("Chassis"), name="hv-plain")
        conns = db.rows("Connection")
        assert [c["role"] for c in conns] == [""]
    finally:
        db.destroy()
