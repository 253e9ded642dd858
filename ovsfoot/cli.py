"""Command line: `ovsfoot agent`, `ovsfoot record`, `ovsfoot scheduler-extender`, `ovsfoot cluster-db`."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time

import ovs.daemon
import ovs.util

from ovsfoot import __version__
from ovsfoot.events import MAX_BYTES, MAX_SECONDS, Thresholds
from ovsfoot.sources import NAMES, SourceUnavailable, open_source

log = logging.getLogger("ovsfoot")
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


def _cluster_args(p: argparse.ArgumentParser, what: str, required: bool = False) -> None:
    g = p.add_argument_group("cluster database")
    g.add_argument("--cluster-db", metavar="REMOTE[,REMOTE...]", required=required,
                   help=f"ovsfoot's cluster database to {what}; e.g. "
                        "ssl:10.0.0.11:6647,ssl:10.0.0.12:6647")
    g.add_argument("-p", "--private-key", metavar="FILE", help="SSL private key")
    g.add_argument("-c", "--certificate", metavar="FILE",
                   help="SSL certificate (for an agent, its CN is the chassis name)")
    g.add_argument("-C", "--ca-cert", metavar="FILE", help="SSL CA certificate")


def _logging(args) -> None:
    level = logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING
    fmt = logging.Formatter("%(asctime)s|%(name)s|%(levelname)s|%(message)s")
    handlers = [logging.StreamHandler(sys.stderr)]
    if args.log_file:
        handlers.append(logging.FileHandler(args.log_file))
        level = min(level, logging.INFO)
    root = logging.getLogger()
    root.setLevel(level)
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)


def _open(args, thresholds: Thresholds):
    source = open_source(args.source, thresholds, netns=args.netns,
                         include_zone0=args.include_zone0, replay_file=args.replay,
                         interval=args.interval, speed=args.speed)
    log.info("source: %s", source.name)
    return source


def cmd_agent(args) -> int:
    from ovsfoot.agent import Agent, Config
    from ovsfoot.control.unixctl import Control

    from ovsfoot.learning import StateFile

    from ovsfoot import support
    support.check(args.source)  # before detaching: too old is exit 1, untested a warning
    thresholds = Thresholds(args.elephant_bytes, args.elephant_seconds, args.idle_seconds)
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
    agent = Agent(cfg, source)
    control = Control(agent, args.unixctl)
    ovs.daemon.daemonize_complete()
    log.info("ovsfoot %s agent running on %s, bridge %s", __version__, agent.db.remote,
             args.bridge)
    try:
        agent.loop(extra=[control])
    except KeyboardInterrupt:
        pass
    finally:
        agent.shutdown()
        control.close()
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
    a.add_argument("--log-file", help="also log to this file")
    a.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    _source_args(a)
    ovs.daemon.add_args(a)
    a.set_defaults(func=cmd_agent)

    r = sub.add_parser("record", help="record a live source's events for replay")
    r.add_argument("-o", "--output", required=True, help="msgpack file to write")
    r.add_argument("--duration", type=_positive(float), default=10.0, help="seconds (default 10)")
    r.add_argument("-v", "--verbose", action="count", default=0)
    r.set_defaults(func=cmd_record, log_file=None)
    _source_args(r)

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
    x.add_argument("--log-file", help="also log to this file")
    x.add_argument("-v", "--verbose", action="count", default=0)
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
            configure_ssl(args.private_key, args.certificate, args.ca_cert)
        return args.func(args)
    except (SourceUnavailable, ValueError, OSError) as e:
        log.error("%s", e)
        print(f"ovsfoot: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
