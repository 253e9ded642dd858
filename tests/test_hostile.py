"""Hardening from an adversarial pass (issue 12): restarts, a hostile state file,
hostile or broken OVSDB content.

The pure logic is tested directly; what involves OVSDB or conntrack runs against
the real chassis of conftest.py (`node`, `agent`).
"""

import logging
import math
import signal

import msgpack
import pytest

from conftest import wait_elephants
from integration.sandbox import kill, sh, wait_for
from ovsfoot.agent import WorkloadIdentities
from ovsfoot.attribution import Attributor, Port, ZoneMap, parse_zone
from ovsfoot.contract import OUTPUT_KEYS, ContractError, printable, validate_workload
from ovsfoot.events import FlowKey
from ovsfoot.learning import KEEP_ENDED_NS, KEEP_OPEN_NS, MAX_FLOWS, Learner, StateFile

S = 10**9
KEY = FlowKey(1, 5, 6, "10.0.0.1", "10.0.0.2", 40000, 5201)
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


# -- item 2: a conntrack entry counts once ------------------------------------------
def test_an_entry_counts_once_across_restarts_and_idle_returns(tmp_path):
    f = StateFile(str(tmp_path / "s"))
    learner = Learner(heavy_at=3)
    assert learner.elephant("w", 10 * S, KEY, 8 * S)
    assert not learner.elephant("w", 20 * S, KEY, 8 * S)        # back from idle
    for restart in range(3):
        f.save(learner.dump(), learner.dump_flows())
        learner = Learner(heavy_at=3)
        learner.load(f.load(), f.flows)
        assert not learner.elephant("w", (30 + restart) * S, KEY, 8 * S + 1000)
    assert learner.records["w"].elephants == 1 and learner.klass("w") == "light"
    # A later entry with the same tuple is another flow, and counts.
    assert learner.elephant("w", 500 * S, KEY, 400 * S)
    assert learner.records["w"].elephants == 2


def test_counted_entries_are_forgotten_when_they_cannot_come_back():
    learner = Learner()
    gone = FlowKey(1, 5, 6, "10.0.0.1", "10.0.0.2", 40001, 5201)
    idle = FlowKey(1, 5, 6, "10.0.0.1", "10.0.0.2", 40002, 5201)
    learner.elephant("w", 0, gone, 0)
    learner.elephant("w", 0, idle, 0)
    learner.seen(gone, 0, S, ended=True)
    learner.seen(idle, 5 * S, 2 * S)               # another entry's start: not it
    assert not learner.counted[idle].ended and learner.counted[idle].last_seen == 0
    learner.tick(KEEP_ENDED_NS + 2 * S)
    assert gone not in learner.counted and idle in learner.counted    # may live on, idle
    learner.tick(KEEP_OPEN_NS + S)
    assert not learner.counted
    for i in range(MAX_FLOWS + 10):                # and never more than MAX_FLOWS
        learner.elephant("w", i, FlowKey(1, 5, 17, "10.0.0.1", "10.0.0.2", i, 53), i)
    assert len(learner.counted) <= MAX_FLOWS


def test_version_1_state_files_still_load(tmp_path):
    path = tmp_path / "s"
    path.write_bytes(msgpack.packb({"version": 1, "workloads": {
        "shop/web": {"score": 4.0, "updated": S, "heavy": True, "elephants": 4}}}))
    f = StateFile(str(path))
    learner = Learner()
    learner.load(f.load(), f.flows)
    assert learner.klass("shop/web") == "heavy" and not learner.counted
    f.save(learner.dump(), learner.dump_flows())
    assert msgpack.unpackb(path.read_bytes())["version"] == 3


def test_restarts_and_time_wait_count_a_flow_once(node, tmp_path):
    """One long flow, three clean restarts, then a restart while its entry is in
    TIME_WAIT (a closed flow: no elephant any more): shop/web has produced one
    elephant, and is not learned heavy."""
    state = tmp_path / "state"
    p1, p2 = node.pods["p1"], node.pods["p2"]
    node.flush_conntrack()
    a = node.agent(state=state).start()     # first: conntrack timestamps on before the flow
    srv = node.popen("p2", "iperf3", "-s", "-1", "-p", "5311")
    client = None
    try:
        wait_for(lambda: ":5311" in node.ns_exec("p2", "ss", "-ltn"), what="iperf3 -s")
        client = node.popen("p1", "iperf3", "-c", p2.ip, "-p", "5311", "-t", "120",
                            "-b", "40M")
        for run in range(4):
            if run:
                a = node.agent(state=state).start()
            wait_elephants(a, lambda rows: any(r["port"] == p1.lport for r in rows),
                           what=f"the flow's elephant (run {run + 1})")
            web = a.json("workload/show")["shop/web"]
            assert web["elephants_seen"] == 1, (run, web)
            assert a.stop() == 0
        client.send_signal(signal.SIGINT)          # a clean end: FIN, then TIME_WAIT
        client.wait(30)
        a = node.agent(state=state).start()
        wait_for(lambda: a.json("stats")["source"]["polls"] >= 3, what="three dumps")
        assert "TIME_WAIT" in sh("ip", "netns", "exec", node.kp.netns, "conntrack", "-L",
                                 "-p", "tcp", "--dport", "5311")
        assert a.json("stats")["elephants_detected"] == 0     # closed: not an elephant
        web = a.json("workload/show")["shop/web"]
        assert web["elephants_seen"] == 1 and web["learned"] == "light", web
        assert "ovsfoot-workload-class" not in node.ovs.external_ids(
            "Interface", p1.interface) or node.ovs.external_ids(
            "Interface", p1.interface)["ovsfoot-workload-class"] == "light"
    finally:
        a.stop()
        kill(client, srv)
        node.flush_conntrack()


# -- item 3 (part): a hostile state file ---------------------------------------------
def test_state_records_with_bad_numbers_are_dropped_one_by_one(tmp_path, caplog):
    good = {"score": 1.5, "updated": S, "heavy": False, "elephants": 2}
    path = tmp_path / "s"
    path.write_bytes(msgpack.packb({"version": 2, "workloads": {
        "inf": {**good, "score": math.inf},
        "nan": {**good, "score": math.nan},
        "negative": {**good, "score": -1.0},
        "neg-elephants": {**good, "elephants": -3},
        "neg-updated": {**good, "updated": -5},
        "bool-score": {**good, "score": True},
        "str-heavy": {**good, "heavy": "false"},
        "bad\nname": good,
        "ok": good,
        "ok-int-score": {**good, "score": 2},
    }, "flows": [[1, 5, 6, "10.0.0.1", "10.0.0.2", 1, 2, 3, 4, False], ["junk"]]}))
    f = StateFile(str(path))
    learner = Learner()
    with caplog.at_level(logging.WARNING, "ovsfoot.learning"):
        learner.load(f.load(), f.flows)
    assert set(learner.records) == {"ok", "ok-int-score"}
    assert len(learner.counted) == 1
    learner.tick(10 * S)
    assert all(math.isfinite(r.score) for r in learner.records.values())
    text = caplog.text
    for name in ("inf", "nan", "negative", "neg-elephants", "neg-updated", "bool-score",
                 "str-heavy"):
        assert f"workload '{name}'" in text
    assert "bad\\x0aname" in text and "bad\nname" not in text
    assert "1 malformed counted conntrack entries" in text


# -- item 4: hostile or broken OVSDB content, the logic -------------------------------
@pytest.mark.parametrize("value", [" 7", "7 ", "1_1", "٣", "+7", "0", "007", "65536",
                                   "7\n", "", "0x7", "７"])
def test_zones_are_parsed_strictly(value):
    assert parse_zone(value) is None


def test_a_zone_not_written_as_ovn_controller_writes_displaces_nobody():
    z = ZoneMap()
    z.update({"ct-zone-lr_dnat": "3", "ct-zone-zz": "3".translate(ARABIC_INDIC),
              "ct-zone-sp": " 7", "ct-zone-us": "1_1", "ct-zone-a": "65535"}, 0, started=True)
    assert {k: o.owner for k, o in z.current.items()} == {3: "lr_dnat", 65535: "a"}


def test_a_zone_claimed_twice_stays_with_who_held_it_or_the_bound_port(caplog):
    a = Attributor()
    a.set_ports({"real": [(Port("real", "real-if", "w", frozenset()), True)]})
    with caplog.at_level(logging.WARNING, "ovsfoot.attribution"):
        a.zones.update({"ct-zone-real": "7"}, 0, started=True, bound={"real"})
        for t in (1, 2, 3):     # the impostor sorts after the real key: it used to win
            a.zones.update({"ct-zone-real": "7", "ct-zone-zz": "7"}, t * S, bound={"real"})
        assert a.zones.current[7].owner == "real" and a.zones.current[7].since == 0
        assert caplog.text.count("zone 7 is claimed by") == 1
        assert "keeping real (it held the zone first)" in caplog.text
        assert a.conflicts(7) == [{"ignored": "ct-zone-zz", "kept": "ct-zone-real",
                                   "why": "it held the zone first"}]
        # Both there from the start: the port bound here wins, a router before the rest.
        z = ZoneMap()
        z.update({"ct-zone-real": "7", "ct-zone-zz": "7", "ct-zone-lr_snat": "9",
                  "ct-zone-zy": "9"}, 0, started=True, bound={"real"})
        assert z.current[7].owner == "real" and z.current[9].owner == "lr_snat"
        z.update({"ct-zone-real": "7"}, S, bound={"real"})      # the impostor is gone
        assert not z.conflicts and z.current[7].since == 0


def test_an_iface_id_on_two_interfaces_stays_with_the_bound_one(caplog):
    a = Attributor()
    real = Port("lp", "p1-ovs", "shop/web", frozenset())
    rogue = Port("lp", "a-rogue", "evil/thief", frozenset())
    with caplog.at_level(logging.WARNING, "ovsfoot.attribution"):
        for _ in range(3):
            a.set_ports({"lp": [(real, True), (rogue, False)]})
        assert a.ports["lp"] is real and caplog.text.count("is on 2 Interfaces") == 1
        a.zones.update({"ct-zone-lp": "4"}, 0, started=True, bound={"lp"})
        assert a.conflicts(4) == [{"ignored": "Interface a-rogue", "kept": "Interface p1-ovs",
                                   "why": "ovn-controller bound it (ovn-installed)"}]
        # Neither bound (ovn-controller down): the one that held the port keeps it.
        a.set_ports({"lp": [(rogue, False), (real, False)]})
        assert a.ports["lp"] is real
        assert a.duplicates["lp"][1] == "it held the port first"


def test_printable_and_workload_identities():
    forged = "team-a/cache\x1b[2K\rFORGED ovsfoot|INFO|x\n\u202e" + "y" * 10_000
    out = printable(forged)
    assert "\n" not in out and "\r" not in out and "\x1b" not in out
    assert "\\x1b[2K\\x0dFORGED" in out and "\\u202e" in out
    assert out.endswith(f"...({len(forged)} characters)") and len(out) < 120
    assert printable("a\\x0ab") == "a\\\\x0ab"      # a literal backslash stays apart
    for bad in (forged, "x" * 254, "a b", "a\u200bb", "", "  ", 3):
        with pytest.raises(ContractError) as e:
            validate_workload(bad)
        assert len(str(e.value)) < 250 and "\x1b" not in str(e.value)
    assert validate_workload(" shop/web ") == "shop/web"
    assert validate_workload("vm:ünïcode-42") == "vm:ünïcode-42"


def test_identities_from_ovsdb_are_validated(caplog):
    ident = WorkloadIdentities().of
    with caplog.at_level(logging.WARNING, "ovsfoot.agent"):
        assert ident("cache-port", {"ovsfoot-workload": "x" * 10_000}) == "cache-port"
        assert ident("cache-port", {"ovsfoot-workload": "x" * 10_000}) == "cache-port"
        assert caplog.text.count("port cache-port: ignoring its ovsfoot-workload") == 1
        assert ident("shop_web-7d9f8b6c5d-x2x4z", {"ovsfoot-workload": "a\nb"}) == "shop/web"
        assert ident("lp", {"vm-id": "evil\nline"}) == "lp"
        assert ident("evil\nport", {}).startswith("iface-id:")
        assert ident("p", {"ovsfoot-workload": " team-a/cache "}) == "team-a/cache"
    assert "evil\nline" not in caplog.text and "evil\nport" not in caplog.text
    assert "x" * 100 not in caplog.text


# -- item 4 against the real chassis ----------------------------------------------------
def iface(node, pod):
    return node.ovs.external_ids("Interface", node.pods[pod].interface)


def controller_back(node):
    node.ovs.provision_chassis()
    wait_for(lambda: all(node.ovs.zones().get(p.lport) for p in node.pods.values()),
             what="ovn-controller to write zones again")


def test_loose_and_duplicate_zones(node, agent):
    p1, p2 = node.pods["p1"], node.pods["p2"]
    dnat_name, dnat = next((n, z) for n, z in node.ovs.zones().items() if n.endswith("_dnat"))
    hostile = {"ct-zone-zz-arabic": str(dnat).translate(ARABIC_INDIC),
               "ct-zone-zz-space": f" {p2.zone}", "ct-zone-zz-underscore": "6_5_5",
               "ct-zone-zz-impostor": str(p1.zone)}     # sorts after p1's key: it used to win
    node.ovs.stop("ovn-controller")      # it owns ct-zone-*: paused meanwhile
    node.ovs.vsctl("set", "Bridge", node.ovs.bridge,
                   *[f'external_ids:{k}="{v}"' for k, v in hostile.items()])
    b = None
    try:
        wait_for(lambda: f"zone {p1.zone} is claimed by" in agent.log_text(),
                 what="the duplicate zone noticed")
        for a in (agent, None):
            since = len(agent.log_text())      # one log file for both agents
            if a is None:               # and an agent that starts with them there
                agent.stop()
                since = len(agent.log_text())
                a = b = node.agent().start()
                wait_for(lambda: f"zone {p1.zone} is claimed by" in b.log_text()[since:],
                         what="the duplicate zone noticed at start")
            zmap = a.json("zone/map")
            assert zmap[str(dnat)]["owner"] == dnat_name
            assert zmap[str(p1.zone)]["owner"] == p1.lport
            assert [c["ignored"] for c in zmap[str(p1.zone)]["conflicts"]] == \
                ["ct-zone-zz-impostor"]                 # zone/map says so too
            assert "ct-zone-zz-impostor ignored" in a.appctl("zone/map")
            assert zmap[str(p2.zone)]["owner"] == p2.lport
            assert "655" not in zmap and not any(e["owner"].startswith("zz-")
                                                 for e in zmap.values())
            node.flush_conntrack()
            rows = node.iperf("p1", "p2", seconds=20, during=lambda: wait_elephants(
                a, lambda r: any(e["zone"] == p1.zone for e in r)))
            mine = [r for r in rows if r["zone"] == p1.zone]
            assert mine[0]["port"] == p1.lport and mine[0]["workload"] == "shop/web"
            log = a.log_text()[since:] if a is b else a.log_text()
            assert log.count(f"zone {p1.zone} is claimed by") == 1, log
            arabic = hostile['ct-zone-zz-arabic']
            assert f"ignoring malformed zone {next(iter(hostile))}='{arabic}'" \
                in log
        assert "keeping shop_web-7d9f8b6c5d-x2x4z (it held the zone first)" in agent.log_text()
        assert "(its logical port has an Interface here)" in b.log_text()
    finally:
        if b is not None:
            b.stop()
        node.ovs.vsctl("remove", "Bridge", node.ovs.bridge, "external_ids", *hostile)
        controller_back(node)


def test_a_second_interface_with_a_ports_iface_id(node, agent):
    p1 = node.pods["p1"]
    node.ovs.stop("ovn-controller")      # it would bind the rogue in turn
    assert iface(node, "p1").get("ovn-installed") == "true"
    node.ovs.vsctl("add-port", node.ovs.bridge, "a-rogue", "--", "set", "Interface", "a-rogue",
                   f'external_ids:iface-id="{p1.lport}"',
                   'external_ids:ovsfoot-workload="evil/thief"')
    b = None
    try:
        for a in (agent, None):
            since = 0
            if a is None:               # an agent that starts with both there
                agent.stop()
                since = len(agent.log_text())      # one log file for both agents
                a = b = node.agent().start()
            logged = lambda: a.log_text()[since:]       # noqa: E731
            wait_for(lambda: f"iface-id {p1.lport} is on 2 Interfaces" in logged(),
                     what="the duplicate iface-id noticed")
            entry = a.json("zone/map")[str(p1.zone)]
            assert entry["interface"] == p1.interface and entry["workload"] == "shop/web"
            assert [c["ignored"] for c in entry["conflicts"]] == ["Interface a-rogue"]
            node.flush_conntrack()
            rows = node.iperf("p1", "p2", seconds=20, during=lambda: wait_elephants(
                a, lambda r: any(e["zone"] == p1.zone for e in r)))
            assert [r["workload"] for r in rows if r["zone"] == p1.zone] == ["shop/web"]
            assert a.json("workload/show").get("evil/thief") is None
            assert not OUTPUT_KEYS & node.ovs.external_ids("Interface", "a-rogue").keys()
            assert logged().count("is on 2 Interfaces") == 1, logged()
            assert f"keeping {p1.interface} (ovn-controller bound it (ovn-installed))" in logged()
    finally:
        if b is not None:
            b.stop()
        node.ovs.vsctl("--if-exists", "del-port", node.ovs.bridge, "a-rogue")
        controller_back(node)


def test_hostile_workload_identities(node, tmp_path):
    p3 = node.pods["p3"]
    forged = "team-a/cache\\u001b[2K\\nFORGED ovsfoot|00001|agent|INFO|all is well"
    for value, what in (("x" * 10_000, "10 kB"), (forged, "ESC and newline")):
        node.ovs.vsctl("set", "Interface", p3.interface, f'external_ids:ovsfoot-workload="{value}"')
        a = node.agent()
        since = len(a.log_text())          # one log file for all agents
        a.start()
        try:
            wait_for(lambda: "ignoring its ovsfoot-workload" in a.log_text()[since:], what=what)
            entry = a.json("zone/map")[str(p3.zone)]
            assert entry["owner"] == p3.lport and entry["workload"] == "cache-port", what
            log = a.log_text()
            assert "\x1b" not in log and "x" * 100 not in log
            assert not any(line.startswith("FORGED") for line in log.splitlines())
            assert "evil" not in a.json("workload/show")
        finally:
            a.stop()
    node.ovs.vsctl("set", "Interface", p3.interface, 'external_ids:ovsfoot-workload="team-a/cache"')
