"""The OVSDB client helpers, without a server."""

import uuid

import ovs.poller

from ovsfoot import contract
from ovsfoot.ovsdb import ClusterIdl, make_idl
from ovsfoot.publishers.legacy import SB_PART


def test_a_client_with_conditions_waits_for_its_server_instead_of_spinning(tmp_path):
    """Conditions set before the first connection must not make wait() wake at once
    while the server is away (python-ovs's Idl does: a core spent until it is back)."""
    remote = f"unix:{tmp_path}/absent.sock"
    for idl in (make_idl(remote, contract.cluster_schema_path(),
                         {"Chassis": ["name"], "Workload_Class": ["learned"]}, ClusterIdl),
                make_idl(remote, SB_PART, None)):
        idl.cond_change(next(iter(idl.tables)), [["_uuid", "==", ["uuid", str(uuid.UUID(int=0))]]])
        for _ in range(3):
            idl.run()
            poller = ovs.poller.Poller()
            idl.wait(poller)
            assert poller.timeout != 0, "wait() asked for an immediate wake-up"
        idl.close()
