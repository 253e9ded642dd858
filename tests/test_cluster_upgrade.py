"""An upgrade of the cluster database: a raft cluster made with the schema before the
traffic columns (1.0.0) is converted online to the packaged one, rows kept, once."""

import json
import subprocess

from integration.sandbox import free_port, sh, wait_for
from ovsfoot import clusterdb, contract

NEW_COLUMNS = ("sensitive_ports", "bps", "flows_per_s")


def old_schema() -> dict:
    """The packaged schema as version 1.0.0 had it."""
    with open(contract.cluster_schema_path()) as f:
        schema = json.load(f)
    schema["version"] = "1.0.0"
    for c in NEW_COLUMNS:
        del schema["tables"]["Chassis"]["columns"][c]
    schema["tables"]["Workload_Class"]["columns"]["learned"]["type"]["key"]["enum"] = \
        ["set", ["heavy", "light"]]
    return schema


def test_an_old_cluster_is_converted_once_and_keeps_its_rows(tmp_path):
    schema = tmp_path / "old.ovsschema"
    schema.write_text(json.dumps(old_schema()))
    db, sock = tmp_path / "cluster.db", tmp_path / "db.sock"
    sh("ovsdb-tool", "create-cluster", str(db), str(schema), f"tcp:127.0.0.1:{free_port()}")
    server = subprocess.Popen(["ovsdb-server", str(db), f"--remote=punix:{sock}",
                               f"--unixctl={tmp_path / 'ctl'}", "--no-chdir",
                               f"--log-file={tmp_path / 'ovsdb-server.log'}"])
    try:
        remote = f"unix:{sock}"
        wait_for(lambda: sock.exists() and subprocess.run(
            ["ovsdb-client", "--timeout=5", "wait", remote, contract.CLUSTER_DB, "connected"],
            capture_output=True).returncode == 0, what="the cluster database")
        sh("ovsdb-client", "transact", remote, json.dumps(
            [contract.CLUSTER_DB, {"op": "insert", "table": "Chassis", "row": {
                "name": "hv-a", "hostname": "a", "footprint": "heavy", "elephants": 1,
                "heavy_ports": 1, "updated": 5}}]))

        assert clusterdb.upgrade_schema(remote) is True
        assert json.loads(sh("ovsdb-client", "get-schema", remote,
                             contract.CLUSTER_DB))["version"] == "1.1.0"
        rows = json.loads(sh("ovsdb-client", "transact", remote, json.dumps(
            [contract.CLUSTER_DB, {"op": "select", "table": "Chassis", "where": []}])))
        [row] = rows[0]["rows"]
        assert (row["name"], row["elephants"], row["bps"], row["sensitive_ports"]) == \
            ("hv-a", 1, 0, 0)
        result = json.loads(sh("ovsdb-client", "transact", remote, json.dumps(
            [contract.CLUSTER_DB, {"op": "insert", "table": "Workload_Class", "row": {
                "workload": "shop/api", "chassis": "hv-a", "learned": "sensitive",
                "score": 3.0, "updated": 5}}])))
        assert "uuid" in result[0], result          # the new class is accepted
        assert clusterdb.upgrade_schema(remote) is False        # once
    finally:
        server.terminate()
        server.wait(10)
