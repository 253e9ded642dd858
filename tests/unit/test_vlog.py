"""ovsfoot writes the lines ovs.vlog writes (cli.VlogPattern), numbered in one sequence
with python-ovs's own modules, at the levels -v and vlog/set give (cli.VlogHandler).

python-ovs's Vlog starts once in a process and takes no new modules after: each test
runs it in a forked child, through its public API.
"""

import argparse
import datetime
import logging
import multiprocessing
import os
import re
import threading
import types

import ovs.vlog
import pytest

from ovsfoot.cli import VlogPattern, start_logging

MESSAGES = ["prioritize shop/web-0 (light: default): 100 nodes, best score 10 on 3, 0.1 ms",
            "", " padded  ", "trailing newline\n", r"back\slash \1 \g<0> %m %p %c",
            "a|b|c", "ünïcode ✓", "multi\nline\ntraceback\n"]
# python-ovs's defaults, and others (one time field each and %m last: python-ovs reads
# only the first, and substitutes the fields after %m inside the message too)
PATTERNS = [*ovs.vlog.PATTERNS.values(), "%A:%-5p %5c%n%0N [%t] %m",
            "%D{%H:%M:%S.##} %c %T %03p %m", "%05N %d %p %m", "%c%T|%m"]
ASKS = (("scheduler.server", "INFO", 0, "MainThread"), ("agent", "WARN", 1, "cluster-view"),
        ("ovsfoot", "DBG", 12345, "MainThread"), ("cli", "ERR", 123456, "Thread-7"),
        ("agent", "EMER", 0, "MainThread"))


def in_child(fn, *args):
    """fn(*args), run in a forked child (a Vlog of its own)."""
    with multiprocessing.get_context("fork").Pool(1) as pool:
        return pool.apply(fn, args)


def ovs_vlog_lines(now: datetime.datetime, cases: list[tuple]) -> list[tuple[int, str]]:
    """The (number, line) python-ovs's Vlog writes to its file destination, at `now`
    (UTC), for each case (pattern, module, level, message, number at least, thread)."""
    local = now.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)

    class Clock(datetime.datetime):
        utcnow = staticmethod(lambda: now)
        now = staticmethod(lambda: local)
    ovs.vlog.datetime = types.SimpleNamespace(datetime=Clock, date=datetime.date)   # its clock
    vlogs = {m: ovs.vlog.Vlog(m) for m in {case[1] for case in cases}}
    ovs.vlog.Vlog.init()
    lines: list[str] = []
    file = logging.getLogger("file")
    capture = logging.Handler()
    capture.emit = lambda record: lines.append(record.getMessage())
    file.addHandler(capture)
    for dest in ("console", "syslog"):
        logging.getLogger(dest).disabled = True
    got, count = [], 0
    for pattern, module, level, message, at_least, thread in cases:
        ovs.vlog.Vlog.set_level("any", "file", "off")
        while count < at_least:
            vlogs[module].dbg("not logged, numbered")
            count += 1
        ovs.vlog.Vlog.set_level("any", "file", "dbg")
        ovs.vlog.Vlog.set_pattern("file", pattern)
        log = getattr(vlogs[module], level.lower())
        if thread == "MainThread":
            log(message)
        else:
            t = threading.Thread(target=log, args=(message,), name=thread)
            t.start()
            t.join()
        got.append((count, lines.pop()))
        count += 1
    return got


def c_milliseconds(line: str, micro: int) -> str:
    """`line` with each run of ~ (where the pattern had #) the milliseconds as OVS's C
    daemons print them (lib/timeval.c strftime_msec: "%03d", cut or filled with 0)."""
    ms = f"{micro // 1000:03d}"
    return re.sub("~+", lambda run: ms.ljust(len(run[0]), "0")[:len(run[0])], line)


@pytest.mark.parametrize("micro", [0, 50, 500, 5000, 12000, 82500, 123456, 999999])
def test_pattern_lines_are_ovs_vlogs_lines(micro):
    """Every field as python-ovs writes it, but the milliseconds of a time field's #
    runs: python-ovs cuts str(ms) to the run ("08:36:21.82." for 82.5 ms), ovsfoot
    writes them as ovs-vswitchd does ("08:36:21.082"), beside whose logs they are read.
    python-ovs is asked with ~ where the pattern has #, and its ~ are these digits."""
    now = datetime.datetime(2026, 11, 26, 3, 4, 5, micro)
    cases = [(pattern, module, level, message, at_least, thread)
             for pattern in PATTERNS for message in MESSAGES
             for module, level, at_least, thread in ASKS]
    theirs = in_child(ovs_vlog_lines, now, [(p.replace("#", "~"), *rest)
                                            for p, *rest in cases])
    utc = now.replace(tzinfo=datetime.timezone.utc)
    for (pattern, module, level, message, _, thread), (num, line) in zip(cases, theirs):
        assert VlogPattern(pattern).line(module, level, num, message, utc, thread) \
            == c_milliseconds(line, micro), (pattern, message)
    assert len(theirs) == len(cases) and any("(cluster-view)" in line for _, line in theirs)
    assert sum("~" in line for _, line in theirs) >= 2 * len(MESSAGES) * len(ASKS)


@pytest.mark.parametrize("time_format, stamp", [
    ("%H:%M:%S.###", "08:36:21.082"), ("%S.##", "21.08"), ("%S.#", "21.0"),
    ("%S.#####", "21.08200"), ("%S.### %S.#", "21.082 21.0")])
def test_milliseconds_are_the_c_daemons(time_format, stamp):
    """82.5 ms: zero-padded whole milliseconds, each run of # on its own."""
    now = datetime.datetime(2026, 11, 26, 8, 36, 21, 82500, datetime.timezone.utc)
    assert VlogPattern(f"%D{{{time_format}}}").line("agent", "INFO", 0, "", now, "t") == stamp


def test_pid_and_uptime_fields():
    """%P and %r, which python-ovs leaves as "%P" and gets wrong past a second."""
    now = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
    pid, ms = VlogPattern("%P %r").line("agent", "INFO", 0, "", now, "MainThread").split()
    assert pid == str(os.getpid()) and int(ms) >= 2000


def handler_writes(log_file: str) -> tuple[list[str], list[str], list[str | None]]:
    """Logs through ovsfoot's VlogHandler and python-ovs's own modules, with -v specs and
    then vlog/set ones; the log file's lines, the console's, and what the specs answered."""
    import ovs.reconnect       # a python-ovs module with its own Vlog
    vlog = start_logging(argparse.Namespace(command="agent", log_file=log_file,
                                            verbose=["dbg", "syslog:off"]))
    console: list[str] = []
    capture = logging.Handler()
    capture.emit = lambda record: console.append(record.getMessage())
    for h in logging.getLogger("console").handlers[:]:
        logging.getLogger("console").removeHandler(h)
    logging.getLogger("console").addHandler(capture)
    agent = logging.getLogger("ovsfoot.agent")
    agent.info("one")
    ovs.reconnect.vlog.info("two")
    agent.debug("three %s", "with args")
    answers = [vlog.set("agent:warn")]
    agent.info("not logged")
    agent.warning("four")
    answers += [vlog.set("pattern:file:%0c: %0p%T: %0m"), vlog.set("nosuch:file:dbg"),
                vlog.set("pattern:nowhere:%m"), vlog.set("pattern:file")]
    agent.error("five")
    ovs.reconnect.vlog.warn("six")
    t = threading.Thread(target=agent.warning, args=("seven",), name="cluster-view")
    t.start()
    t.join()
    with open(log_file) as f:
        return f.read().splitlines(), console, answers


def test_handler_writes_vlogs_lines_in_one_sequence(tmp_path):
    lines, console, answers = in_child(handler_writes, str(tmp_path / "agent.log"))
    assert answers == [None, None, 'no destination, level, or module "nosuch"',
                       "Destination nowhere does not exist",
                       "Please supply a valid pattern and destination"]
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert [re.fullmatch(rf"{stamp} \|(.{{5}})\| (.*)", line).groups() for line in lines[:4]] \
        == [("  0  ", "agent | INFO | one"), ("  1  ", "reconnect | INFO | two"),
            ("  2  ", "agent | DBG | three with args"), ("  3  ", "agent | WARN | four")]
    assert lines[4:] == ["agent: ERR: five", "reconnect: WARN: six",
                         "agent: WARN (cluster-view) : seven"]
    # the console's lines (its default pattern), numbered as the file's
    assert [line.split("|", 1)[1] for line in console] == [
        "  0  | agent | INFO | one", "  1  | reconnect | INFO | two",
        "  2  | agent | DBG | three with args", "  3  | agent | WARN | four",
        "  4  | agent | ERR | five", "  5  | reconnect | WARN | six",
        "  6  | agent  (cluster-view) | WARN | seven"]
