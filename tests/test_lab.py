"""The lab, for real: OVN over Geneve on the OVS kernel datapath in a VM, with the
bpf source in each chassis' agent and ovsfoot's 3-member cluster database on the
central node (integration/lab_scenario.py). One run of the lab serves all the
tests here; they read its report. The lab judges itself (its checks); the tests
here ask for every check to pass and look at what the checks do not: the report's
shape, its figures, its picture."""

import json
import sys

import pytest

from integration import lab, lab_report


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    work = tmp_path_factory.mktemp("lab")
    rep, output = lab.run(work)
    sys.stdout.write(output[-4000:])
    assert rep is not None, f"the lab produced no report:\n{output[-4000:]}"
    print(lab_report.render(rep))
    return rep


def check(report, name):
    found = [c for c in report["checks"] if c["name"] == name]
    assert found, f"the lab never checked {name!r}"
    return found[0]


def whats(report):
    return [row["what"] for row in report["timeline"]]


def test_lab_runs_to_the_end_with_every_check_passing(report):
    failed = [c for c in report["checks"] if not c["ok"]]
    assert not failed, json.dumps(failed, indent=1)


def test_elephant_attributed_on_both_chassis_through_geneve(report):
    rows = {r["what"]: r for r in report["timeline"]}
    src, sink = rows["elephant detected on hv1"], rows["elephant detected on hv2"]
    assert src["role"] == "source" and src["workload"] == "lab/elephant-client"
    assert sink["role"] == "sink" and sink["workload"] == "lab/elephant-server"
    zones = report["zones"]
    assert src["zone"] == zones["hv1"][src["port"]]
    assert sink["zone"] == zones["hv2"][sink["port"]]
    assert rows["elephant started"]["t"] < src["t"] and rows["elephant started"]["t"] < sink["t"]


def test_mice_never_become_elephants(report):
    assert check(report, "hv1: no other elephant (the mice are not)")["ok"]
    assert check(report, "hv2: no other elephant (the mice are not)")["ok"]
    during = report["published"]["during"]
    assert during["hv1"]["interfaces"]["lab_mice-client-6c8d9f7b5c-p4m2z"][
        "ovsfoot-footprint"] == "light"
    assert during["hv2"]["interfaces"]["lab_mice-server-0"]["ovsfoot-footprint"] == "light"


def test_node_summary_on_the_integration_bridge_only(report):
    for hv in ("hv1", "hv2"):
        assert check(report, f"{hv}: node keys published on Bridge br-int")["ok"]
        assert check(report, f"{hv}: no ovsfoot key on the Open_vSwitch row")["ok"]
        assert report["published"]["during"][hv]["open_vswitch"] == {}


def test_keys_published_then_withdrawn(report):
    during, after = report["published"]["during"], report["published"]["after"]
    for hv, lport in (("hv1", "lab_elephant-client-5f7d8c9b4d-k2x7q"),
                      ("hv2", "lab_elephant-server-0")):
        assert during[hv]["interfaces"][lport]["ovsfoot-footprint"] == "heavy"
        assert during[hv]["node"]["ovsfoot-elephants"] == "1"
        assert after[hv]["interfaces"][lport]["ovsfoot-elephants"] == "0"
        assert after[hv]["node"]["ovsfoot-footprint"] == "light"
    order = whats(report)
    for hv in ("hv1", "hv2"):
        assert order.index(f"published on {hv}") < order.index(f"withdrawn on {hv}")



def test_detection_latency_is_measured(report):
    latency = report["detection_latency_ms"]
    assert set(latency) == {"hv1", "hv2"}
    assert all(0 <= ms < 10_000 for ms in latency.values()), latency
    print(f"detection latency (threshold crossing -> OVSDB monitor): {latency} ms")



def test_agents_used_the_kernel_program(report):
    ready = [r for r in report["timeline"] if r["what"] == "agent ready" and r["source"] == "bpf"]
    assert len(ready) == 2 and all(r["probe"] in ("kprobe", "fentry") for r in ready), ready


def test_cluster_db_runs_three_members(report):
    status = report["cluster_db"]["status"]
    assert len(status) == 3
    assert sum("Role: leader" in st for st in status.values()) == 1, status



def test_ovn_cost_measured_on_every_daemon(report):
    cost = report["ovn_cost"]
    control, agents = cost["control"], cost["agents"]
    # (the lab's checks compare them) a control phase as long as the agents' phase, or
    # longer, and every daemon measured
    assert control["seconds"] >= agents["seconds"] - 1, cost
    assert set(agents["central"]) == {"ovn-northd"}
    assert set(agents["hv1"]) == {"ovn-controller", "ovs-vswitchd"}
    # and they would see one: what an Open_vSwitch-row write costs
    assert cost["probe"]["hv3"]["ovn-controller"] >= 1, cost
    print("\n".join(lab_report.render_cost(cost)))




def test_experiment_row_d_isolation_alternated_with_b(report, tmp_path):
    """Row (d): isolation on hv1, measured twice, alternated with (b), in the same boot;
    the elephant's packets isolated after its detection; the picture drawn from it."""
    exp = report["experiment"]
    assert [r["row"] for r in exp["rounds"]] == ["d", "b", "d", "b"], exp["rounds"]
    assert all(r["p99_ms"] is not None and r["elephant_mbits"] for r in exp["rounds"])
    assert exp["p99_ms"]["isolated on hv1"] is not None
    goal = exp["goals"]["(d) mice p99 <= 1.5x (a)"]
    assert goal["ratio"] == round(exp["p99_ms"]["isolated on hv1"] / exp["p99_ms"]["alone"], 2)
    assert 0 <= exp["detection_to_isolation_ms"] < 1000, exp["detection_to_isolation_ms"]
    kinds = {m["kind"] for m in exp["marks"]}
    assert {"detection", "isolation", "publication", "placement"} <= kinds, exp["marks"]
    assert set(exp["latency_cdf_ms"]) == {"(a) alone", "(b) beside the elephant",
                                          "(c) placed by ovsfoot", "(d) isolated on hv1"}
    png = lab_report.picture(report, tmp_path / "lab-report.png")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"
    on = [row for row in report["timeline"] if row["what"] == "hv1 isolation switched on"]
    assert on and all(row["qdisc"] and row["qdisc"]["handle"] == "f5a0:" for row in on), on
