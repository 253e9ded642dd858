"""Command line: `ovsfoot agent|record|scheduler-extender|cluster-db`."""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import logging
import math
import os
import re
import sys
import threading
import time
from typing import Callable

import ovs.daemon
import ovs.dirs
import ovs.fatal_signal
import ovs.unixctl
import ovs.util
import ovs.vlog

import ovsfoot
from ovsfoot import __version__
from ovsfoot.events import MAX_BYTES, MAX_SECONDS, Thresholds
from ovsfoot.sources import NAMES, SourceUnavailable, open_source

log = logging.getLogger(__name__)
_DEFAULTS = Thresholds()
ovs.util.PROGRAM_NAME = "ovsfoot"     # pidfile and ctl socket names for ovs-appctl -t ovsfoot


def _positive(kind, high: float | None = None, nonzero: bool = False):
    """An argparse type: a finite number >= 0 (> 0 if `nonzero`; at most `high`)."""
    rng = "> 0" if nonzero else ">= 0"
    if high is not None:
        rng += f" and <= {high}" if kind is int else f" and <= {high:g}"

    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'a whole' if kind is int else 'a'} number") from None
        if (isinstance(v, float) and not math.isfinite(v)) or v < 0 or (nonzero and v == 0) \
                or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: give a "
                                             f"{'whole' if kind is int else 'finite'} "
                                             f"number {rng}")
        return v
    return parse


def _source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("source")
    g.add_argument("--source", choices=NAMES, default="auto",
                   help="where flow events come from (default: auto = bpf, else ctnetlink)")
    g.add_argument("--netns", help="network namespace of the OVS datapath (default: our own)")
    g.add_argument("--include-zone0", action="store_true",
                   help="also count conntrack zone 0 (not an OVN port's zone)")
    g.add_argument("--interval", type=_positive(float), default=1.0,
                   help="ctnetlink poll interval in seconds (default 1)")
    g.add_argument("--replay", metavar="FILE", help="recording for --source replay")
    g.add_argument("--speed", type=_positive(float), default=1.0,
                   help="replay speed factor, 0 = as fast as possible (default 1)")
    g.add_argument("--elephant-bytes", type=_positive(int, MAX_BYTES, nonzero=True),
                   default=_DEFAULTS.bytes,
                   help="bytes a flow must carry to be an elephant (default %(default)s)")
    g.add_argument("--elephant-seconds", type=_positive(float, MAX_SECONDS),
                   default=_DEFAULTS.seconds,
                   help="seconds a flow must live to be an elephant (default %(default)s)")
    g.add_argument("--idle-seconds", type=_positive(float, MAX_SECONDS, nonzero=True),
                   default=_DEFAULTS.idle_seconds,
                   help="an elephant idle this long has ended (default %(default)s)")


# the traffic classes' thresholds: option, Thresholds field, type, upper bound, help
RATE_OPTIONS = (
    ("--heavy-bps", "heavy_bps", float, 1e15, "a port whose throughput over the rate window "
     "is above this (bit/s) is heavy"),
    ("--sensitive-flows", "sensitive_flows", float, 1e9, "a port with this many new flows "
     "per second or more..."),
    ("--sensitive-flow-bytes", "sensitive_flow_bytes", int, MAX_BYTES, "...of at most this "
     "many bytes each is sensitive"),
    ("--rate-window", "window", float, 3600, "seconds over which throughput and flow rate "
     "are averaged (at least 1)"),
)


def _rate_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("traffic classes (threshold/set changes them live)")
    for flag, field, kind, high, text in RATE_OPTIONS:
        g.add_argument(flag, type=_positive(kind, high, nonzero=True),
                       default=getattr(_DEFAULTS, field), help=f"{text} (default %(default)g)")


def _isolate_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("isolation of elephants on the Geneve underlay")
    g.add_argument("--isolate", nargs="?", const="auto", metavar="IFACE",
                   help="put active elephants' tunnel packets in a lower band of a qdisc on "
                        "IFACE's egress (default: the interface holding ovn-encap-ip); "
                        "off by default, `ovs-appctl -t ovsfoot isolate/set on|off` live")
    g.add_argument("--isolate-dscp", type=_positive(int, 63), metavar="N",
                   help="also rewrite isolated packets' outer DSCP to N (0-63)")


def _ssl_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SSL, for every ssl: remote (as OVS and OVN daemons take it)")
    g.add_argument("-p", "--private-key", metavar="FILE", help="SSL private key")
    g.add_argument("-c", "--certificate", metavar="FILE",
                   help="SSL certificate (for an agent, its CN is the chassis name)")
    g.add_argument("-C", "--ca-cert", metavar="FILE", help="SSL CA certificate")
    g.add_argument("--bootstrap-ca-cert", metavar="FILE",
                   help="SSL CA certificate, fetched from the first server and saved "
                        "here if FILE does not exist (trust on first use)")


def _cluster_args(p: argparse.ArgumentParser, what: str, required: bool = False) -> None:
    g = p.add_argument_group("cluster database")
    g.add_argument("--cluster-db", metavar="REMOTE[,REMOTE...]", required=required,
                   help=f"ovsfoot's cluster database to {what}; e.g. "
                        "ssl:10.0.0.11:6647,ssl:10.0.0.12:6647")
    _ssl_args(p)


# -- logging: ovs.vlog, as every OVS daemon --------------------------------------
# ovsfoot's modules log with the standard library (logging.getLogger(__name__));
# VlogHandler writes each record as ovs.vlog does for the module named after the
# logger without "ovsfoot." (ovsfoot.agent: "agent", ovsfoot.scheduler.server:
# "scheduler.server"; anything else: "ovsfoot"), so that -v/--verbose and
# vlog/set|list|reopen treat them as python-ovs's own (idl, jsonrpc, reconnect...).
VLOG_DEFAULTS = {"console": "warn", "syslog": "err", "file": "info"}
_OVS_VLOG_USERS = ("ovs.daemon", "ovs.db.idl", "ovs.fatal_signal", "ovs.jsonrpc",
                   "ovs.poller", "ovs.reconnect", "ovs.socket_util", "ovs.stream",
                   "ovs.unixctl.client", "ovs.unixctl.server")
_OVS_LEVELS = ((logging.CRITICAL, "emer"), (logging.ERROR, "err"),
               (logging.WARNING, "warn"), (logging.INFO, "info"), (0, "dbg"))


def vlog_modules() -> list[str]:
    """ovs.vlog module names of ovsfoot's modules (from the package's files)."""
    top = os.path.dirname(ovsfoot.__file__)
    names = {"ovsfoot"}
    for path, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if os.path.exists(os.path.join(path, d, "__init__.py")))
        rel = os.path.relpath(path, top)
        pkg = "" if rel == "." else rel.replace(os.sep, ".")
        for f in files:
            if f.endswith(".py") and f != "__main__.py":
                mod = f[:-3]
                name = pkg if mod == "__init__" else f"{pkg}.{mod}" if pkg else mod
                names.add((name or "ovsfoot").lower())
    return sorted(names)


_TOKEN = re.compile(r"%(0?[1-9]?)([dD])(?:\{([^}]*)\})?|%-?0?[0-9]?([AcmNnpPrtT])")
_RAW = "%N|%c|%p|%m"    # the pattern python-ovs formats its own modules' lines with
_START = datetime.datetime.now(datetime.timezone.utc)
_MS_RUN = re.compile("#+")
# a value of vlog's pattern language, from (module, LEVEL, number, message, UTC time, thread)
_Value = Callable[[str, str, int, str, datetime.datetime, str], str]
_VALUES: dict[str, _Value] = {
    "A": lambda c, p, n, m, now, t: ovs.util.PROGRAM_NAME,
    "c": lambda c, p, n, m, now, t: c,
    "m": lambda c, p, n, m, now, t: m,
    "N": lambda c, p, n, m, now, t: str(n),
    "n": lambda c, p, n, m, now, t: "\n",
    "p": lambda c, p, n, m, now, t: p,
    "P": lambda c, p, n, m, now, t: str(os.getpid()),
    "r": lambda c, p, n, m, now, t: str((now - _START) // datetime.timedelta(milliseconds=1)),
    "t": lambda c, p, n, m, now, t: "main" if t == "MainThread" else t,
    "T": lambda c, p, n, m, now, t: "" if t == "MainThread" else f"({t})",
}


def _clock(utc: bool, time_format: str | None) -> _Value:
    """%D{FORMAT} (UTC) or %d{FORMAT} (local time): ISO 8601 to the second without FORMAT;
    each run of # the milliseconds as OVS's C daemons print them (strftime_msec: the
    zero-padded three digits, cut or filled with 0 to the run's width, so that "%S.###"
    reads 21.082 where python-ovs writes 21.82.)."""
    if time_format is None:
        return lambda c, p, n, m, now, t: \
            (now if utc else now.astimezone()).replace(microsecond=0, tzinfo=None).isoformat()
    last = (None, "")       # a second and its stamp: strftime once a second, without %f

    def clock(c, p, n, m, now, t):
        nonlocal last
        now = now if utc else now.astimezone()
        second = now.replace(microsecond=0)
        if second != last[0] or "%f" in time_format:
            last = (second, now.strftime(time_format))
        ms = f"{now.microsecond // 1000:03d}"
        return _MS_RUN.sub(lambda run: ms.ljust(len(run[0]), "0")[:len(run[0])], last[1])
    return clock


class VlogPattern:
    """A pattern of ovs-appctl(8)'s `vlog/set pattern:DEST:PATTERN`, parsed once; `line`
    formats as python-ovs's Vlog does (its spaces around fields without a 0 flag; the
    milliseconds as OVS's C daemons print them), without its dozen regular expressions
    per line (~80 us)."""

    def __init__(self, pattern: str):
        self._parts: list[tuple[str, _Value, bool, int]] = []
        # (the text before, the value, a space either side of it, its centred width)
        pos = 0
        for t in _TOKEN.finditer(pattern):
            flags = re.match(r"%(0)?([1-9])?", t.group(0))     # vlog's: "%-5p" has no width
            value = _VALUES[t.group(4)] if t.group(4) else _clock(t.group(2) == "D", t.group(3))
            pad = not flags.group(1) and t.group(4) != "n"
            self._parts.append((pattern[pos:t.start()], value, pad, int(flags.group(2) or 0)))
            pos = t.end()
        self._tail = pattern[pos:]

    def line(self, module: str, level: str, num: int, message: str,
             now: datetime.datetime, thread: str) -> str:
        """The line for a message (`level`: INFO, WARN...; `now`: UTC; `thread`: the
        thread's name)."""
        out = []
        for text, value, pad, width in self._parts:
            v = value(module, level, num, message, now, thread)
            if pad and v:
                v = f" {v} "
            out += (text, v.center(width) if width else v)
        out.append(self._tail)
        return "".join(out).strip()


class VlogHandler(logging.Handler):
    """Forwards standard-library log records to ovs.vlog's destinations (the loggers
    console, syslog, file), at the levels python-ovs keeps for each module (-v,
    vlog/set, vlog/list; one Vlog per ovsfoot module, made before Vlog.init, as
    python-ovs requires), in the lines ovs.vlog writes, numbered in one sequence with
    python-ovs's own modules' lines (which it hands over in the pattern _RAW)."""

    def __init__(self, modules: list[str]):
        super().__init__(logging.DEBUG)
        self.vlogs = {m: ovs.vlog.Vlog(m) for m in modules}
        self.patterns = {d: VlogPattern(p) for d, p in ovs.vlog.PATTERNS.items()}
        self.levels: dict[str, dict[str, int]] = {}    # module: destination: logging level
        self.log_file: str | None = None
        self.inited = False
        self._module: dict[str, str] = {}
        self._loggers = {d: logging.getLogger(d) for d in ovs.vlog.DESTINATIONS}
        self._numbers = itertools.count()
        self._theirs: tuple[str | None, int] = (None, 0)   # python-ovs's last number, ours

    def init(self) -> None:
        """After Vlog.init: python-ovs's own lines come through `_renumber`."""
        for dest, logger in self._loggers.items():
            ovs.vlog.Vlog.set_pattern(dest, _RAW)
            logger.addFilter(self._renumber)
        self.inited = True
        self.sync_levels()

    def module(self, logger: str) -> str:
        m = self._module.get(logger)
        if m is None:
            name = logger.lower()
            m = "ovsfoot"
            if name.startswith("ovsfoot."):
                parts = name[len("ovsfoot."):].split(".")
                for n in range(len(parts), 0, -1):
                    if ".".join(parts[:n]) in self.vlogs:
                        m = ".".join(parts[:n])
                        break
            self._module[logger] = m
        return m

    def emit(self, record: logging.LogRecord) -> None:
        if record.name in ovs.vlog.DESTINATIONS:   # vlog's own loggers: never back in
            return
        try:
            msg = record.getMessage()
            if record.exc_info:
                msg += "\n" + logging.Formatter().formatException(record.exc_info)
            level = next(name for at, name in _OVS_LEVELS if record.levelno >= at)
            self._log(self.module(record.name), level, msg)
        except Exception:
            self.handleError(record)

    def _log(self, module: str, level: str, msg: str) -> None:
        """What `Vlog(module).<level>(msg)` does: a line in each destination that logs
        `level` for `module`."""
        if not self.inited:
            return
        level_num = ovs.vlog.LEVELS[level]
        num = next(self._numbers)
        now = datetime.datetime.now(datetime.timezone.utc)
        thread = threading.current_thread().name
        for dest, dest_level in self.levels[module].items():
            logger = self._loggers[dest]
            if level_num >= dest_level and logger.isEnabledFor(level_num):
                line = self.patterns[dest].line(module, level.upper(), num, msg, now, thread)
                record = logger.makeRecord(dest, level_num, "(unknown file)", 0, line, None,
                                           None)      # Logger.log without findCaller
                record.vlog_line = True
                logger.handle(record)

    def _renumber(self, record: logging.LogRecord) -> bool:
        """A python-ovs module's line in a destination's logger ("N|module|LEVEL|message",
        its Vlog's pattern _RAW) written as ours: numbered in our sequence (one number for
        all its destinations)."""
        if not getattr(record, "vlog_line", False):
            theirs, module, level, msg = record.msg.split("|", 3)
            if self._theirs[0] != theirs:
                self._theirs = (theirs, next(self._numbers))
            record.msg = self.patterns[record.name].line(
                module.strip(), level.strip(), self._theirs[1], msg[1:],
                datetime.datetime.now(datetime.timezone.utc), threading.current_thread().name)
        return True

    def sync_levels(self) -> None:
        """Reads the levels python-ovs keeps (vlog/list's table) and sets each ovsfoot
        logger's level to the lowest its module logs at in a destination that writes
        somewhere, so that what nobody logs costs nothing."""
        rows = (line.split() for line in ovs.vlog.Vlog.get_levels().splitlines()[2:])
        columns = ("console", "syslog", "file")
        self.levels = {m: {d: ovs.vlog.LEVELS[lv] for d, lv in zip(columns, row)}
                       for m, *row in rows}
        dests = ["console"] + (["file"] if self.log_file else []) + \
            ([] if logging.getLogger("syslog").disabled else ["syslog"])
        for m in self.vlogs:
            lvl = min(self.levels[m][d] for d in dests)
            logging.getLogger("ovsfoot" if m == "ovsfoot" else f"ovsfoot.{m}").setLevel(lvl)
            if m == "ovsfoot":
                logging.getLogger().setLevel(lvl)

    def set(self, spec: str) -> str | None:
        """Applies a -v or vlog/set spec (ovs-vswitchd(8)); an error message if it is not
        one. Levels and FACILITY are python-ovs's; patterns ours (python-ovs's stays _RAW),
        the rest of the spec verbatim, as OVS's C daemons take it (python-ovs drops its
        colons and spaces)."""
        words = re.split("[ :]", spec, maxsplit=2)
        if words[0] != "pattern":
            msg = ovs.vlog.Vlog.set_levels_from_string(spec)
            if not msg:
                self.sync_levels()
            return msg
        if len(words) < 3 or not words[2]:
            return "Please supply a valid pattern and destination"
        if words[1] not in ovs.vlog.DESTINATIONS:
            return f"Destination {words[1]} does not exist"
        self.patterns[words[1]] = VlogPattern(words[2])
        return None

    # unixctl, registered before Vlog.init registers python-ovs's own
    def unixctl_set(self, conn, argv, _aux) -> None:
        for arg in argv:
            msg = self.set(arg)
            if msg:
                conn.reply_error(msg)
                return
        conn.reply(None)

    def unixctl_reopen(self, conn, _argv, _aux) -> None:
        if not self.log_file:
            conn.reply("Logging to file not configured")
            return
        file = self._loggers["file"]
        old = [h for h in file.handlers if isinstance(h, logging.FileHandler)]
        try:
            ovs.vlog.Vlog.reopen_log_file()
        except OSError as e:
            for h in old:                               # keep writing where it did
                file.addHandler(h)
            conn.reply_error(f"cannot reopen {self.log_file}: {e.strerror or e}")
            return
        for h in old:
            h.close()
        log.info("log file %s reopened", self.log_file)
        conn.reply(None)


_vlog: VlogHandler | None = None


def _vlog_args(p: argparse.ArgumentParser) -> None:
    """As OVS daemons take them (python-ovs's add_args, but -v accumulates)."""
    g = p.add_argument_group("logging (ovs.vlog)")
    g.add_argument("--log-file", nargs="?", const="default", metavar="FILE",
                   help="log to FILE (without FILE: $OVS_LOGDIR/ovsfoot.log for the agent, "
                        "ovsfoot-COMMAND.log otherwise); vlog/reopen reopens it")
    g.add_argument("-v", "--verbose", action="append", nargs="?", const="dbg",
                   metavar="module[:dest[:level]]",
                   help="log levels, as ovs-vswitchd(8): -v alone is -vdbg (all modules, "
                        "all destinations); e.g. -vagent:file:dbg, -vconsole:off. "
                        f"Destinations console, syslog, file (defaults "
                        f"{', '.join(f'{d}:{lv}' for d, lv in VLOG_DEFAULTS.items())}); "
                        "modules: see ovs-appctl -t ovsfoot vlog/list")


def start_logging(args: argparse.Namespace) -> VlogHandler:
    """--log-file[=FILE] and -v/--verbose[=module[:dest[:level]]] through ovs.vlog (once
    in a process: python-ovs's Vlog starts once)."""
    global _vlog
    verbose = args.verbose if isinstance(getattr(args, "verbose", None), list) else None
    log_file = getattr(args, "log_file", None)
    if log_file == "default":
        name = {"agent": "ovsfoot"}.get(args.command, f"ovsfoot-{args.command}")
        log_file = os.path.join(ovs.dirs.LOGDIR, f"{name}.log")
    if log_file:
        log_file = os.path.abspath(log_file)        # --detach changes directory
    if _vlog is None:
        import importlib
        for m in _OVS_VLOG_USERS:       # each makes its Vlog on import: before init
            importlib.import_module(m)
        _vlog = VlogHandler(vlog_modules())
        for dest, level in VLOG_DEFAULTS.items():
            ovs.vlog.Vlog.set_level("any", dest, level)
        for spec in verbose or []:
            msg = _vlog.set(spec)
            if msg:
                raise SystemExit(f"ovsfoot: -v {spec}: {msg}")
        ovs.unixctl.command_register("vlog/set", "spec", 1, sys.maxsize,
                                     _vlog.unixctl_set, None)
        ovs.unixctl.command_register("vlog/reopen", "", 0, 0, _vlog.unixctl_reopen, None)
        problem = None
        if log_file:
            try:
                open(log_file, "a").close()
            except OSError as e:
                problem = f"cannot open --log-file {log_file}: {e.strerror}"
        _vlog.log_file = None if problem else log_file
        ovs.vlog.Vlog.init(_vlog.log_file)
        for dest in ovs.vlog.DESTINATIONS:
            logger = logging.getLogger(dest)
            logger.propagate = False
            if not logger.handlers:
                logger.addHandler(logging.NullHandler())
        logging.getLogger().addHandler(_vlog)
        # what no vlog pattern shows is not gathered for each record (the logging
        # HOWTO's "Optimization"): the caller's file and line, the thread (vlog's %t
        # and %T ask threading themselves)
        logging._srcfile = None
        logging.logThreads = False
        _vlog.init()
        if problem:
            log.warning("%s: logging to the console only", problem)
    return _vlog


def _open(args, thresholds: Thresholds):
    source = open_source(args.source, thresholds, netns=args.netns,
                         include_zone0=args.include_zone0, replay_file=args.replay,
                         interval=args.interval, speed=args.speed)
    log.info("source: %s", source.name)
    return source


def cmd_agent(args) -> int:
    from ovsfoot import support
    from ovsfoot.agent import Agent, Config
    from ovsfoot.control.unixctl import Control
    from ovsfoot.isolation import Isolator
    from ovsfoot.learning import StateFile

    support.check(args.source)  # before detaching: too old is exit 1, untested a warning
    thresholds = Thresholds(args.elephant_bytes, args.elephant_seconds, args.idle_seconds,
                            **{f: getattr(args, o[2:].replace("-", "_"))
                               for o, f, *_ in RATE_OPTIONS})
    thresholds.validate()
    try:        # before anything starts: a directory would be renamed, a FIFO would block
        state = os.path.abspath(StateFile.check(args.state)) if args.state else None
    except ValueError as e:
        raise ValueError(f"--state: {e}") from None
    ovs.daemon.handle_args(args)
    if not args.pidfile:
        ovs.daemon.set_pidfile(None)
    ovs.daemon.daemonize_start()
    source = _open(args, thresholds)
    cfg = Config(db=args.db, bridge=args.bridge, thresholds=thresholds, state=state,
                 heavy_at=args.heavy_at, half_life=args.half_life,
                 cluster_db=args.cluster_db, heartbeat=args.heartbeat)
    isolator = Isolator(args.isolate, args.netns, args.isolate_dscp, on=bool(args.isolate))
    if args.isolate:
        isolator.prepare()      # compiles the classifier before the loop starts
    # SIGTERM and SIGINT end the process in python-ovs's handler, past `finally`:
    # the uplink gets its qdisc back there too
    ovs.fatal_signal.add_hook(isolator.close, None, True)
    agent = Agent(cfg, source, isolator=isolator)
    extra = [Control(agent, args.unixctl)]
    if args.metrics:
        from ovsfoot.control.metrics import serve_agent
        extra.append(serve_agent(agent, args.metrics))
    ovs.daemon.daemonize_complete()
    log.info("ovsfoot %s agent running on %s, bridge %s", __version__, agent.db.remote,
             args.bridge)
    # What start-up made (modules, bcc's program, python-ovs's schema: ~40,000 objects)
    # lives as long as the process: frozen, a full collection no longer walks it (7 ms
    # each on a fast core, a pause in the middle of a detection to publish).
    gc.collect()
    gc.freeze()
    try:
        agent.loop(extra=extra)
    except KeyboardInterrupt:
        pass
    finally:
        agent.shutdown()
        for x in extra:
            x.close()
    return 0


def cmd_record(args) -> int:
    from ovsfoot.sources.replay import Recorder
    import ovs.poller

    thresholds = Thresholds(args.elephant_bytes, args.elephant_seconds, args.idle_seconds)
    thresholds.validate()
    source = _open(args, thresholds)
    rec = Recorder(args.output, source.name)
    end = time.monotonic() + args.duration
    try:
        while time.monotonic() < end:
            rec.write(source.run())
            poller = ovs.poller.Poller()
            source.wait(poller)
            poller.timer_wait(int(max(0, end - time.monotonic()) * 1000))
            poller.block()
    except KeyboardInterrupt:
        pass
    finally:
        rec.close()
        source.close()
    print(f"recorded {rec.count} events from {source.name} into {args.output}")
    return 0


def cmd_scheduler_extender(args) -> int:
    from ovsfoot.scheduler.server import serve
    return serve(args)


def cmd_cluster_db(args) -> int:
    from ovsfoot import clusterdb
    return clusterdb.run(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ovsfoot", description=__doc__)
    p.add_argument("--version", action="version", version=f"ovsfoot {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("agent", help="run the per-node agent")
    a.add_argument("--db", help="OVSDB remote (default: unix:$OVS_RUNDIR/db.sock)")
    a.add_argument("--bridge", default="br-int", help="integration bridge (default br-int)")
    a.add_argument("--state", default="/var/lib/ovsfoot/state.msgpack",
                   help="file of learned workload classes (default %(default)s)")
    a.add_argument("--heavy-at", type=_positive(float, nonzero=True), default=3.0,
                   help="elephants (decayed) that make a workload heavy (default 3)")
    a.add_argument("--half-life", type=_positive(float, nonzero=True), default=6 * 3600.0,
                   help="seconds for a workload's elephant score to halve (default 6 h)")
    _cluster_args(a, "publish this chassis' summary and learned classes to, and read "
                     "other chassis' from (default: none, no cluster view)")
    a.add_argument("--heartbeat", type=_positive(float), default=10.0,
                   help="refresh this chassis' summary in the cluster database at least "
                        "this often, so that readers tell a dead agent from a quiet node "
                        "(default %(default)s s)")
    a.add_argument("--unixctl", help="control socket (default: $OVS_RUNDIR/ovsfoot.PID.ctl)")
    a.add_argument("--metrics", metavar="ADDR:PORT",
                   help="serve Prometheus metrics on http://ADDR:PORT/metrics (default: off)")
    _source_args(a)
    _rate_args(a)
    _isolate_args(a)
    _vlog_args(a)
    ovs.daemon.add_args(a)
    a.set_defaults(func=cmd_agent)

    r = sub.add_parser("record", help="record a live source's events for replay")
    r.add_argument("-o", "--output", required=True, help="msgpack file to write")
    r.add_argument("--duration", type=_positive(float), default=10.0, help="seconds (default 10)")
    r.set_defaults(func=cmd_record)
    _source_args(r)
    _vlog_args(r)

    x = sub.add_parser("scheduler-extender", help="kube-scheduler extender over the "
                       "footprints the agents publish in the cluster database")
    x.add_argument("--listen", default="127.0.0.1:8899",
                   help="HOST:PORT to serve HTTP on (default %(default)s; port 0: any)")
    _cluster_args(x, "read the cluster view from: any member, or a relay", required=True)
    x.add_argument("--node-key", choices=["hostname", "name"], default="hostname",
                   help="Kubernetes node name = Chassis hostname, or Chassis name "
                        "(system-id) (default hostname)")
    x.add_argument("--filter-heavy", action="store_true",
                   help="filter: drop heavy nodes for light pods (never all of them)")
    x.add_argument("--stale-seconds", type=_positive(float), default=30.0,
                   help="a chassis whose summary has not been refreshed for this long "
                        "(its agent is dead or cut off) scores as unknown (default "
                        "%(default)s; agents refresh every 10 s)")
    x.add_argument("--assume-seconds", type=_positive(float), default=60.0,
                   help="a heavy pod ranked best on a node counts there until its agent "
                        "reports it, or this long (default %(default)s; 0: off)")
    t = x.add_argument_group("HTTPS")
    t.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    t.add_argument("--tls-key", metavar="FILE",
                   help="the certificate's private key (default: in --tls-cert's file)")
    t.add_argument("--client-ca", metavar="FILE", help="mutual TLS: serve only clients "
                   "whose certificate this CA signed (kube-scheduler's tlsConfig.certFile)")
    _vlog_args(x)
    x.set_defaults(func=cmd_scheduler_extender)

    from ovsfoot import clusterdb
    clusterdb.add_parser(sub).set_defaults(func=cmd_cluster_db)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    start_logging(args)
    try:
        if hasattr(args, "ca_cert"):
            from ovsfoot.ovsdb import configure_ssl
            configure_ssl(args.private_key, args.certificate, args.ca_cert,
                          args.bootstrap_ca_cert)
        return args.func(args)
    except (SourceUnavailable, ValueError, OSError) as e:
        log.error("%s", e)
        print(f"ovsfoot: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
