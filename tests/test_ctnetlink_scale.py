"""The ctnetlink source on a production-sized table: 1,000,000 kernel conntrack
entries in a network namespace (integration/cttable.py), a real agent polling it.

Its dumps take seconds here; they run a slice at a time, so the agent's loop keeps
answering. Speed itself is measured in bench/ctnetlink_scale.py, next to conntrack -L.
"""

from integration.cttable import ConntrackTable, agent_during_polls

ENTRIES = 1_000_000


def test_agent_answers_during_1m_entry_dumps(tmp_path):
    with ConntrackTable(ENTRIES) as table:
        assert table.count() >= ENTRIES * 0.99
        a = agent_during_polls(table, tmp_path, polls=2)
    ms, stats = a["answers_ms"], a["stats"]
    assert stats["entries_last_poll"] >= ENTRIES * 0.99
    # the answers spanned whole dumps, each longer than the interval
    assert stats["last_poll_s"] > 1 and len(ms) >= 5
    assert max(ms) <= 200, f"ovs-appctl version took up to {max(ms):.0f} ms: {ms}"
    assert a["peak_rss_kib"] < 200 * 1024
    # at start: a warning with the measured poll time, once
    assert len(a["warned"]) == 1 and "entries) takes" in a["warned"][0], a["warned"]
