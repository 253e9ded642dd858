"""Command line: `ovsfoot agent|record|scheduler-extender|cluster-db`."""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import sys
import threading
import time

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
# VlogHandler hands each record to the ovs.vlog module named after the logger
# without "ovsfoot." (ovsfoot.agent: "agent", ovsfoot.scheduler.server:
# "scheduler.server"; anything else: "ovsfoot"), so that -v/--verbose and
# vlog/set|list|reopen treat them as python-ovs's own (idl, jsonrpc, reconnect...).
VLOG_DEFAULTS = {"console": "warn", "syslog": "err", "file": "info"}
_OVS_VLOG_USERS = ("ovs.daemon", "ovs.db.idl", "ovs.fatal_signal", "ovs.jsonrpc",
                   "ovs.poller", "ovs.reconnect", "ovs.socket_util", "ovs.stream",
                   "ovs.unixctl.client", "ovs.unixctl.server")
_OVS_LEVELS = ((logging.CRITICAL, "emer"), (logging.ERROR, "err"),
               (logging.WARNING, "warn"), (logging.INFO, "info"), (0, "dbg"))


_VLOG_PATTERNS = dict(ovs.vlog.PATTERNS)       # python-ovs's defaults, before any set_pattern
_VLOG_TIMES = {"console": "%Y-%m-%dT%H:%M:%SZ", "file": "%Y-%m-%dT%H:%M:%S.###Z"}


def vlog_line(dest: str, module: str, level: str, num: int, message: str,
              now: datetime.datetime, thread: str) -> str:
    """The line ovs.vlog's `_build_message` makes with its default pattern for `dest`
    (`level`: INFO, WARN...; `now`: UTC; `thread`: the thread's name), without its
    regular expressions: a dozen of them per line cost ~80 us."""
    if dest == "syslog":
        head = "ovs"
    else:
        stamp = now.strftime(_VLOG_TIMES[dest])
        if "#" in stamp:            # vlog's milliseconds: str(ms) cut to 3 characters
            stamp = stamp.replace("###", f"{str(now.microsecond / 1000):0>3.3}")
        head = f" {stamp} "
    n = str(num)
    if len(n) < 5:
        n = n.center(5)
    sub = "" if thread == "MainThread" else f" ({thread}) "
    return (f"{head}|{n}| {module} {sub}|{f' {level} ' if level else ''}|"
            f"{f' {message} ' if message else ''}").strip()


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


class VlogHandler(logging.Handler):
    """Forwards standard-library log records to ovs.vlog, one Vlog per ovsfoot module
    (made before Vlog.init, as python-ovs requires), with OVS's level names."""

    def __init__(self, modules: list[str]):
        super().__init__(logging.DEBUG)
        self.vlogs = {m: ovs.vlog.Vlog(m) for m in modules}
        self._module: dict[str, str] = {}
        self._loggers: dict[str, logging.Logger] = {}
        self.log_file: str | None = None

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
        """What `Vlog(module).<level>(msg)` does (the same lines, numbered in the same
        sequence), with default patterns formatted by `vlog_line`."""
        vlog = ovs.vlog.Vlog
        if not vlog._Vlog__inited:
            return
        level_num = ovs.vlog.LEVELS.get(level, logging.DEBUG)
        num = vlog._Vlog__msg_num
        vlog._Vlog__msg_num = num + 1
        now = thread = None
        for dest, dest_level in vlog._Vlog__mfl[module].items():
            if level_num < ovs.vlog.LEVELS.get(dest_level, logging.CRITICAL):
                continue
            if vlog._Vlog__log_patterns.get(dest) != _VLOG_PATTERNS.get(dest):
                line = self.vlogs[module]._build_message(msg, dest, level.upper(), num)
            else:
                if now is None:
                    now = datetime.datetime.now(datetime.timezone.utc)
                    thread = threading.current_thread().name
                line = vlog_line(dest, module, level.upper(), num, msg, now, thread)
            logger = self._loggers.get(dest)
            if logger is None:
                logger = self._loggers[dest] = logging.getLogger(dest)
            if logger.isEnabledFor(level_num):     # Logger.log without findCaller: the
                logger.handle(logger.makeRecord(    # destinations' format is the line alone
                    dest, level_num, "(unknown file)", 0, line, None, None))

    def sync_levels(self) -> None:
        """Sets each ovsfoot logger's level to the lowest its Vlog module logs at in a
        destination that writes somewhere, so that what nobody logs costs nothing."""
        levels = ovs.vlog.Vlog._Vlog__mfl     # module: destination: level name
        dests = ["console"] + (["file"] if self.log_file else []) + \
            ([] if logging.getLogger("syslog").disabled else ["syslog"])
        for m in self.vlogs:
            lvl = min(ovs.vlog.LEVELS.get(levels[m][d], logging.CRITICAL) for d in dests)
            logging.getLogger("ovsfoot" if m == "ovsfoot" else f"ovsfoot.{m}").setLevel(lvl)
            if m == "ovsfoot":
                logging.getLogger().setLevel(lvl)

    # unixctl, registered before Vlog.init registers python-ovs's own
    def unixctl_set(self, conn, argv, _aux) -> None:
        for arg in argv:
            msg = ovs.vlog.Vlog.set_levels_from_string(arg)
            if msg:
                conn.reply_error(msg)
                return
        self.sync_levels()
        conn.reply(None)

    def unixctl_reopen(self, conn, _argv, _aux) -> None:
        if not self.log_file:
            conn.reply("Logging to file not configured")
            return
        old = ovs.vlog.Vlog._Vlog__file_handler
        try:
            ovs.vlog.Vlog.reopen_log_file()
        except OSError as e:
            logging.getLogger("file").addHandler(old)   # keep writing where it did
            conn.reply_error(f"cannot reopen {self.log_file}: {e.strerror or e}")
            return
        if old is not None:
            old.close()
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


def _logging(args) -> None:
    """--log-file[=FILE] and -v/--verbose[=module[:dest[:level]]] through ovs.vlog."""
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
            msg = ovs.vlog.Vlog.set_levels_from_string(spec)
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
        _vlog.sync_levels()
        if problem:
            log.warning("%s: logging to the console only", problem)


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
    _logging(args)
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
