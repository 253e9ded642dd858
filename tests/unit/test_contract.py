"""The contract: the heavy/light rule, key values, workload identity (no I/O)."""

import pytest

from ovsfoot import contract as c


def test_one_rule_for_port_workload_and_node():
    assert c.classify() == "light"
    assert c.classify(elephants=1) == "heavy"
    assert c.classify(learned="heavy") == "heavy"
    assert c.classify(learned="light") == "light"
    assert c.classify(heavy_ports=2) == "heavy"


def test_heavy_wins_when_opinions_differ():
    assert c.merge_classes(["light", "heavy"]) == "heavy"
    assert c.merge_classes(["light", None]) == "light"
    assert c.merge_classes([None, "bogus"]) is None


@pytest.mark.parametrize("ids,err", [
    ({c.FOOTPRINT: "medium"}, "not one of light, sensitive, heavy"),
    ({c.ELEPHANTS: "-1"}, "non-negative integer"),
    ({c.ELEPHANTS: "two"}, "non-negative integer"),
    ({c.TS: "1.5"}, "non-negative integer"),
])
def test_keys_off_the_contract_are_refused(ids, err):
    with pytest.raises(c.ContractError, match=err):
        c.PortKeys.parse(ids, "Interface x")


def test_keys_round_trip():
    port = c.PortKeys.parse({**c.PortKeys.format(2, "light"), c.TS: "5"}, "Interface x")
    assert (port.footprint, port.elephants, port.workload_class, port.updated_ms) == \
        ("heavy", 2, "light", 5)
    assert c.WORKLOAD_CLASS not in c.PortKeys.format(0, None)
    node = c.NodeKeys.parse(c.NodeKeys.format(0, 1), "Bridge br-int")
    assert (node.footprint, node.elephants, node.heavy_ports) == ("heavy", 0, 1)
    assert c.NodeKeys.format(0, 0)[c.FOOTPRINT] == "light"


@pytest.mark.parametrize("lport,ids,workload", [
    ("shop_web-7d9f8b6c5d-x2x4z", {}, "shop/web"),          # Deployment
    ("kube-system_agent-7k2vq", {}, "kube-system/agent"),   # DaemonSet
    ("kube-system_node-exporter-8xq2p", {}, "kube-system/node-exporter"),  # DaemonSet
    ("shop_db-0", {}, "shop/db"),                           # StatefulSet
    ("shop_web", {}, "shop/web"),
    ("port-1", {"vm-id": "42"}, "vm:42"),
    ("3f1b2a4c-0c5e-4a8e-9f7a-2b1c9d8e7f6a", {"vm-uuid": "u1"}, "vm:u1"),
    ("port-1", {"ovsfoot-workload": " team/cache "}, "team/cache"),
    ("shop_web-7d9f8b6c5d-x2x4z", {"ovsfoot-workload": "billing"}, "billing"),
    ("Not_A_Pod", {}, "Not_A_Pod"),
    ("lsp-plain", {}, "lsp-plain"),
])
def test_workload_identity(lport, ids, workload):
    assert c.workload_of(lport, ids) == workload


def test_pod_and_iface_id_agree():
    assert c.workload_of(c.iface_id("shop", "web-7d9f8b6c5d-x2x4z"), {}) == \
        c.pod_workload("shop", "web-7d9f8b6c5d-x2x4z") == "shop/web"


@pytest.mark.parametrize("bad", ["", " ", "a b", "x" * 254, "evil\x1b[2J", "line\nbreak", 7])
def test_invalid_workloads(bad):
    with pytest.raises(c.ContractError):
        c.validate_workload(bad)
    assert not c.usable_workload(bad, "test")


def test_integration_bridge():
    assert c.integration_bridge({}) == "br-int"
    assert c.integration_bridge({"ovn-bridge": "br-ovn"}) == "br-ovn"
