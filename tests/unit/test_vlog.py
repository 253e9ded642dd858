"""The log line ovsfoot formats itself (cli.vlog_line) is the one ovs.vlog makes."""

import datetime
import threading
import types
import warnings

import ovs.vlog
import pytest

from ovsfoot.cli import vlog_line

MESSAGES = ["prioritize shop/web-0 (light: default): 100 nodes, best score 10 on 3, 0.1 ms",
            "", " padded  ", "trailing newline\n", r"back\slash \1 \g<0> %m %p %c",
            "a|b|c", "ünïcode ✓", "multi\nline\ntraceback\n"]


def vlog_made(monkeypatch, now, dest, module, level, num, message) -> str:
    """What ovs.vlog's own `_build_message` makes, at `now`."""
    fake = types.SimpleNamespace(datetime=types.SimpleNamespace(utcnow=lambda: now),
                                 date=datetime.date)
    monkeypatch.setattr(ovs.vlog, "datetime", fake)
    v = object.__new__(ovs.vlog.Vlog)       # no Vlog(): that needs Vlog.init not done
    v.name = module
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)     # its currentThread()
        return v._build_message(message, dest, level, num)


@pytest.mark.parametrize("micro", [0, 50, 500, 5000, 12000, 123456, 999999])
@pytest.mark.parametrize("dest", ["file", "console", "syslog"])
def test_vlog_line_is_ovs_vlogs_line(monkeypatch, dest, micro):
    now = datetime.datetime(2026, 11, 26, 3, 4, 5, micro)
    for message in MESSAGES:
        for num, level, module in ((0, "INFO", "scheduler.server"), (42, "WARN", "agent"),
                                   (12345, "DBG", "ovsfoot"), (1234567, "ERR", "cli")):
            want = vlog_made(monkeypatch, now, dest, module, level, num, message)
            assert vlog_line(dest, module, level, num, message, now, "MainThread") == want
    # from another thread, whose name vlog shows
    got = {}

    def other():
        got["want"] = vlog_made(monkeypatch, now, dest, "agent", "INFO", 7, "m")
        got["ours"] = vlog_line(dest, "agent", "INFO", 7, "m", now,
                                threading.current_thread().name)
    t = threading.Thread(target=other, name="cluster-view")
    t.start()
    t.join()
    assert got["ours"] == got["want"] and "(cluster-view)" in got["want"]
