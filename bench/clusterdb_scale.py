"""The cluster database at scale, on the host: 200 chassis against a 3-member raft cluster.

ovsfoot's own clustered OVSDB (`OVSFoot_Cluster`, integration/clusterdb.py: three
members in network namespaces, SSL, RBAC per chassis) gets 200 simulated chassis.
Each is the agent's own `ClusterPublisher` (one `ClusterIdl` each, as shipped,
with its own certificate: CN = chassis name), driven by a paced feed: its node summary
changes every 0.25-5.75 s (3 s on average), and now and then (1 change in 20) it
learns a workload class, heavy or light. Four worker processes drive 50
publishers each in one poll loop. Two real scheduler extenders
(`ovsfoot scheduler-extender`, separate processes) read the cluster, one directly
from the members, one through an ovsdb-server relay, and a prober POSTs
`/prioritize` for all 200 nodes to each every 100 ms.

Legs, each on freshly seeded Chassis rows (the steady state, not a start-up storm):
  raft_relay    the chassis connect to one relay in front of the members that
                applies the RBAC role itself (OVN's relay layout for ovn-controller);
                2 parts of 15 s (6 s with --quick)
  standalone    the baseline: one standalone ovsdb-server (not clustered; same
                SSL, Connection row and RBAC role); 2 parts, alternated with raft_relay
  raft          the chassis connect to the members (what `--cluster-db` lists);
                20 s (8 s), last
then the extender's reader (the real ClusterDbView) at 200, 1,000 and 10,000 chassis.

Measured over the feed plus 4 s to drain:
  commit latency     change handed to publish() -> its transaction's SUCCESS
                     (includes the wait for the publisher's 1 s min_interval)
  view freshness     change handed to publish() -> first /prioritize answer whose
                     score for that node is the one the change implies
  leader CPU per tx  utime+stime of the raft leader's ovsdb-server over the
                     window / transactions committed in it
  per-chassis rate   transactions each chassis started, peak over 10 s windows,
                     and the smallest gap between two of one chassis
  chassis inbound    bytes each chassis' connection received per second

python-ovs keeps one SSL key and certificate per process. So that each chassis
still presents its own certificate, every chassis gets a stream class of its own
(`ChassisSSL`, registered as connection method `sslhvNNNN:`) that loads its
key and certificate when it opens a connection; the server sees exactly what
200 agents would send.

    python -m bench.clusterdb_scale [--quick] [-v]
"""

from __future__ import annotations

import bisect
import heapq
import http.client
import json
import multiprocessing
import random
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import REPO, Result, percentile, proc_cpu_s, ratio

CHASSIS = 200
WORKERS = 4
MEAN_GAP = 3.0              # s between two summary changes of one chassis (uniform +-2.75)
LEARN_P = 0.05              # a change also learns a workload class (1 in 20)
HALF_LIFE = 6 * 3600.0      # the agent's default; lessons decay as the agent's do
MIN_INTERVAL = 1.0          # ClusterPublisher's default
POLL_S = 0.1                # prober: one /prioritize per extender this often
DRAIN_S = 4.0
# Node loads (elephants + heavy ports) whose light-pod scores all differ:
# 10, 7, 5, 4, 3, 2, 1, 0. A change never takes any of the last 4 loads again,
# so an answer's score says which state of the node it reflects.
LOADS = (0, 1, 2, 3, 4, 6, 18, 40)
AVOID = 4
PROBE_POD = {"metadata": {"name": "probe", "namespace": "bench",
                          "labels": {"ovsfoot.io/footprint": "light"}}}


def chassis_name(i: int) -> str:
    return f"hv{i:04d}"


def hostname(i: int) -> str:
    return f"node{i:04d}"


# -- certificates ---------------------------------------------------------------
def make_creds(sb, names: list[str]) -> dict[str, tuple[str, str, str]]:
    """(key, certificate, CA) per name, CN = name, signed by the sandbox's switch CA.

    EC P-256 keys with openssl (about 40 ms each, two at a time) rather than
    ovs-pki's RSA-2048 req+sign (0.25 s each): 200 chassis in seconds."""
    ca = sb.pki / "switchca" / "cacert.pem"
    ca_key = sb.pki / "switchca" / "private" / "cakey.pem"
    d = sb.workdir / "chassis-pki"
    d.mkdir(exist_ok=True)

    def one(name: str) -> tuple[str, tuple[str, str, str]]:
        key, csr, cert = d / f"{name}-key.pem", d / f"{name}-req.pem", d / f"{name}-cert.pem"
        if not cert.exists():
            subj = f"/C=US/ST=CA/O=Open vSwitch/OU=Open vSwitch certifier/CN={name}"
            for cmd in (["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                         "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
                         "-out", str(csr), "-subj", subj],
                        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca),
                         "-CAkey", str(ca_key), "-set_serial",
                         str(random.getrandbits(63)), "-days", "30", "-out", str(cert)]):
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
                if p.returncode:
                    raise RuntimeError(f"{' '.join(cmd[:2])} {name}: {p.stderr.strip()}")
        return name, (str(key), str(cert), str(ca))
    with ThreadPoolExecutor(2) as ex:
        return dict(ex.map(one, names))


# -- a chassis ------------------------------------------------------------------
def register_chassis_ssl(scheme: str, creds: tuple[str, str, str]) -> None:
    """Connection method `scheme:` = ssl: with this chassis' own key and certificate."""
    import ovs.stream
    key, cert, ca = creds

    class ChassisSSL(ovs.stream.SSLStream):
        @staticmethod
        def _open(suffix, dscp):
            # python-ovs reads the process-wide files when it opens a connection
            ovs.stream.Stream.ssl_set_private_key_file(key)
            ovs.stream.Stream.ssl_set_certificate_file(cert)
            ovs.stream.Stream.ssl_set_ca_cert_file(ca)
            return ovs.stream.SSLStream._open(suffix, dscp)
    ovs.stream.Stream.register_method(scheme, ChassisSSL)


def timed_publisher_class():
    from ovs.db.idl import Transaction as Txn
    from ovsfoot.publishers.cluster import ClusterPublisher

    class TimedPublisher(ClusterPublisher):
        """The agent's ClusterPublisher, unchanged, plus timestamps: when each
        change was handed to publish(), when each transaction started, and when
        it succeeded (and which state of the feed it carried)."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.state = -1
            self.pending: list[tuple[int, float]] = []     # (state, t) in no transaction yet
            self.inflight: list[tuple[int, float]] = []
            self.carried = -1
            self.starts: list[float] = []
            self.successes: list[tuple[int, float]] = []   # (state carried, t SUCCESS)
            self.latency: list[tuple[float, float]] = []   # (t publish, s to SUCCESS)
            self.refused = self.reverted = self.repeats = 0
            self._ok_state = -1

        def publish_state(self, state: int, node: dict, lessons: dict) -> None:
            self.state = state
            self.pending.append((state, time.monotonic()))
            self.publish(node, lessons)

        def reconcile(self, idl, comment: str) -> None:
            before, n = self.txn, self.transactions
            super().reconcile(idl, comment)
            now = time.monotonic()
            if before is not None and self.txn is not before:
                status = before.commit()        # a finished transaction keeps its status
                if status in (Txn.SUCCESS, Txn.UNCHANGED):
                    self.successes.append((self.carried, now))
                    self._ok_state = self.carried
                    self.latency += [(t, now - t) for _, t in self.inflight]
                else:
                    self.refused += 1
                    self.pending = self.inflight + self.pending
                self.inflight, self.carried = [], -1
            if self.transactions > n:
                self.starts.append(self._last)      # the publisher's own start time
                if self.state == self._ok_state:
                    self.repeats += 1               # committed already: a heartbeat
                if self.txn is not None:
                    self.inflight, self.pending = self.pending, []
                    self.carried = self.state
            elif (self.txn is None and self.pending and self.idl.has_ever_connected()
                  and now - self._last >= self.min_interval and not self.diff()):
                self.reverted += len(self.pending)      # back to what is committed
                self.pending = []

    return TimedPublisher


class Feed:
    """One chassis' paced changes."""

    def __init__(self, i: int, seed: int):
        from ovsfoot.scheduler.scoring import score as _score, NodeFacts
        self.i = i
        self.rng = random.Random(seed * 100_003 + i)
        self.loads = [0]
        self.lessons: dict[str, tuple[str, float, float]] = {}   # workload: klass, score, t
        self.state = 0
        self._score, self._facts = _score, NodeFacts

    def node(self, load: int) -> tuple[dict[str, str], int]:
        from ovsfoot.contract import LIGHT, NodeKeys
        hp = self.rng.randint(0, min(2, load))
        el = load - hp
        facts = self._facts(chassis_name(self.i), hostname(self.i),
                            "heavy" if load else "light", el, hp)
        return NodeKeys.format(el, hp), self._score(facts, LIGHT)

    def gap(self) -> float:
        return MEAN_GAP + self.rng.uniform(-2.75, 2.75)

    def change(self, now: float):
        """(state, node keys, lessons, light-pod score the extender should answer)."""
        from ovsfoot.publishers.cluster import Lesson
        load = self.rng.choice([x for x in LOADS if x not in self.loads[-AVOID:]])
        self.loads.append(load)
        self.state += 1
        node, score = self.node(load)
        if self.rng.random() < LEARN_P:
            w = f"ns{self.rng.randrange(20)}/app{self.rng.randrange(100)}"
            heavy = self.rng.random() < 0.5
            self.lessons[w] = ("heavy" if heavy else "light",
                               3 + 2 * self.rng.random() if heavy else 2 * self.rng.random(),
                               now)
        lessons = {w: Lesson(k, s * 0.5 ** ((now - t) / HALF_LIFE))
                   for w, (k, s, t) in self.lessons.items()}
        return self.state, node, lessons, score


class Loop:
    """Many publishers in one poll loop: a publisher runs only when one of its
    file descriptors is ready, its timer is due, or it was handed a change."""

    def __init__(self, pubs):
        self.regs: dict = {}
        self.due = set(pubs)
        self.wakeups = 0

    def run_due(self) -> None:
        import ovs.poller
        now = time.monotonic()
        for p in self.due:
            p.run()
            pl = ovs.poller.Poller()
            p.wait(pl)
            self.regs[p] = (list(pl.poll.rlist), list(pl.poll.wlist), list(pl.poll.xlist),
                            None if pl.timeout < 0 else now + pl.timeout / 1000)
        self.due = set()

    def block(self, until: float, extra=()) -> set:
        owners: dict[int, list] = {}
        r, w, x = list(extra), [], []
        deadline = until
        for p, (rl, wl, xl, d) in self.regs.items():
            for lst, fds in ((r, rl), (w, wl), (x, xl)):
                for fd in fds:
                    lst.append(fd)
                    owners.setdefault(fd, []).append(p)
            if d is not None and d < deadline:
                deadline = d
        try:
            rr, ww, xx = select.select(r, w, x, max(0.0, deadline - time.monotonic()))
        except (OSError, ValueError):           # a stale descriptor: run everyone
            self.due = set(self.regs)
            return set()
        self.wakeups += 1
        now = time.monotonic()
        ready = set(rr) | set(ww) | set(xx)
        for fd in ready:
            self.due.update(owners.get(fd, ()))
        for p, (_, _, _, d) in self.regs.items():
            if d is not None and d <= now:
                self.due.add(p)
        return ready


def worker(conn, spec: dict) -> None:
    """A worker process: spec['chassis'] chassis, one poll loop, until told to stop."""
    import ovsfoot.publishers.cluster as cluster_mod
    cluster_mod.log.disabled = True           # per-chassis "connected" lines: noise here
    Timed = timed_publisher_class()
    pubs, feeds = [], []
    for i in spec["chassis"]:
        scheme = f"ssl{chassis_name(i)}"
        register_chassis_ssl(scheme, tuple(spec["creds"][chassis_name(i)]))
        remote = ",".join(f"{scheme}:{addr}" for addr in spec["members"])
        pubs.append(Timed(remote, chassis_name(i), hostname(i), MIN_INTERVAL))
        feeds.append(Feed(i, spec["seed"]))
    for p, f in zip(pubs, feeds):
        node, _ = f.node(0)
        p.publish_state(0, node, {})
    loop = Loop(pubs)
    fd = conn.fileno()
    deadline = time.monotonic() + 120
    def settled(p) -> bool:
        return (p.idl.has_ever_connected() and p.txn is None and not p.pending
                and not p.diff())
    while not all(settled(p) for p in pubs):
        if time.monotonic() > deadline:
            conn.send(("error", f"{sum(settled(p) for p in pubs)} of {len(pubs)} "
                                "chassis connected and published within 120 s"))
            return
        loop.run_due()
        loop.block(time.monotonic() + 0.5)
    conn.send(("ready", len(pubs)))
    go = None
    while go is None:
        loop.run_due()
        if fd in loop.block(time.monotonic() + 1.0, [fd]):
            go = conn.recv()
    if go[0] != "go":
        return
    _, t0, t_feed_end, t_end = go
    for p in pubs:
        p.reverted = p.repeats = 0              # the seeded first state, matched on connect
    heap = [(t0 + f.rng.uniform(0, 2 * MEAN_GAP), k) for k, f in enumerate(feeds)]
    heapq.heapify(heap)
    changes: list[list] = [[] for _ in pubs]        # (state, t, score)
    lag: list[float] = []                           # publish() - when it was due
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    wake0, rx0 = loop.wakeups, received(pubs)
    while (now := time.monotonic()) < t_end:
        while heap and heap[0][0] <= now and heap[0][0] < t_feed_end:
            due, k = heapq.heappop(heap)
            state, node, lessons, score = feeds[k].change(now)
            pubs[k].publish_state(state, node, lessons)
            changes[k].append((state, time.monotonic(), score))
            lag.append(changes[k][-1][1] - due)
            loop.due.add(pubs[k])
            heapq.heappush(heap, (now + feeds[k].gap(), k))
        loop.run_due()
        nxt = heap[0][0] if heap and heap[0][0] < t_feed_end else t_end
        loop.block(min(nxt, t_end))
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    conn.send(("done", {
        "rx_bytes": received(pubs) - rx0,
        "lag": lag,
        "cpu_s": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
        "wakeups": loop.wakeups - wake0,
        "chassis": {p.chassis: {"i": spec["chassis"][k], "changes": changes[k],
                                "starts": p.starts, "committed": p.successes,
                                "latency": p.latency, "refused": p.refused,
                                "reverted": p.reverted, "failures": p.failures,
                                "repeats": p.repeats,
                                "pending": len(p.pending) + len(p.inflight)}
                    for k, p in enumerate(pubs)}}))


def received(pubs) -> int:
    """Bytes the publishers' connections have received (a reconnection restarts its count)."""
    return sum(p.idl.received_bytes() for p in pubs)


def _worker_main(conn, spec) -> None:
    try:
        worker(conn, spec)
    except Exception as e:          # tell the parent rather than leave it waiting
        import traceback
        conn.send(("error", f"{e!r}\n{traceback.format_exc()}"))
    finally:
        conn.close()


# -- the servers ----------------------------------------------------------------
def netns_on_bridge(sb, ns: str, ip: str) -> None:
    """A network namespace with `ip` on the sandbox's bridge, like the members'."""
    from integration.sandbox import sh
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", ns, "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "link", "set", ns, "master", sb.bridge, "up")
    sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")


def listening(ns: str, port: int = 6647) -> bool:
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hltn", "sport", f"= :{port}"],
                         capture_output=True, text=True).stdout
    return bool(out.strip())


class Server:
    """An ovsdb-server of the bench in a namespace of its own on the sandbox's
    bridge, serving the chassis on the Connection rows of OVSFoot_Cluster (pssl:6647,
    RBAC role ovsfoot-chassis), with the same CA as the members."""

    def __init__(self, sb, name: str, host: int):
        self.sb, self.name = sb, name
        self.ns = f"{sb.tag}{name[:4]}"
        self.ip = f"{sb.subnet}.{host}"
        self.dir = sb.workdir / name
        self.pidfile = self.dir / "ovsdb-server.pid"
        self.admin = f"unix:{self.dir / 'db.sock'}"

    def _start(self, db: str) -> None:
        from integration.sandbox import sh, wait_for
        from ovsfoot import clusterdb
        self.dir.mkdir(exist_ok=True)
        netns_on_bridge(self.sb, self.ns, self.ip)
        key, cert, ca = self.sb.client_creds(self.name)
        sh("ip", "netns", "exec", self.ns, "ovsdb-server", db,
           f"--remote=db:{clusterdb.DB_NAME},Cluster_Global,connections",
           f"--remote=punix:{self.dir / 'db.sock'}", f"--unixctl={self.dir / 'ovsdb-server.ctl'}",
           f"--pidfile={self.pidfile}", f"--log-file={self.dir / 'ovsdb-server.log'}",
           f"--private-key={key}", f"--certificate={cert}", f"--ca-cert={ca}",
           "--detach", "--no-chdir")
        if not db.startswith("relay:"):
            clusterdb.bootstrap(self.admin, clusterdb.listen_target(None, True))
        wait_for(lambda: listening(self.ns), timeout=20, what=f"{self.name} to listen on 6647")

    @property
    def remote(self) -> str:
        return f"{self.ip}:6647"

    @property
    def pid(self) -> int:
        return int(self.pidfile.read_text())

    def stop(self) -> None:
        from integration.sandbox import kill_pidfile, sh
        kill_pidfile(self.pidfile)
        sh("ip", "netns", "del", self.ns, check=False)


class Standalone(Server):
    """The baseline: one standalone (not clustered) OVSFoot_Cluster server, with the
    same SSL files, Connection row and RBAC role as the cluster (host .11)."""

    def __init__(self, sb):
        super().__init__(sb, "standalone", 11)

    def start(self) -> "Standalone":
        from integration.sandbox import sh
        from ovsfoot import contract
        db = self.sb.workdir / "standalone.db"
        sh("ovsdb-tool", "create", str(db), contract.cluster_schema_path())
        self._start(str(db))
        return self


class WriterRelay(Server):
    """An ovsdb-server relay for the chassis, the way OVN's relay tutorial puts
    ovn-controllers behind relays (host .10): it listens on the relayed
    database's Connection rows, so it applies their RBAC role to each chassis
    (CN of its certificate), and forwards writes to the members over their admin
    sockets (no role)."""

    def __init__(self, sb):
        super().__init__(sb, "wrelay", 10)

    def start(self) -> "WriterRelay":
        from ovsfoot import clusterdb
        self._start(f"relay:{clusterdb.DB_NAME}:" + ",".join(m.admin for m in self.sb.members))
        return self


class Extender:
    """`ovsfoot scheduler-extender` in a process of its own, and an HTTP client for it."""

    def __init__(self, name: str, remote: str, creds, logdir: Path):
        from integration.sandbox import free_port
        self.name, self.remote = name, remote
        self.log = logdir / f"extender-{name}.log"
        self.port = free_port()
        ssl = [f"--private-key={creds[0]}", f"--certificate={creds[1]}",
               f"--ca-cert={creds[2]}"] if creds else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ovsfoot", "scheduler-extender",
             f"--listen=127.0.0.1:{self.port}", f"--cluster-db={remote}", *ssl],
            cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=self.log.open("w"))
        self.conn: http.client.HTTPConnection | None = None
        self.answer_s: list[float] = []
        self.obs: dict[str, list[tuple[float, int]]] = {}    # host: (t, score) when it changed
        self.failed = 0

    def healthz(self) -> dict:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            c.request("GET", "/healthz")
            return json.loads(c.getresponse().read())
        finally:
            c.close()

    def wait_synced(self, chassis: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"extender {self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                last = self.healthz()
                if last.get("synced") and last.get("chassis") == chassis:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"extender {self.name} did not see {chassis} chassis: {last}")

    def probe(self, body: bytes) -> None:
        t_ask = time.monotonic()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            self.conn.request("POST", "/prioritize", body,
                              {"Content-Type": "application/json"})
            answer = json.loads(self.conn.getresponse().read())
        except (OSError, http.client.HTTPException, ValueError):
            self.failed += 1
            self.conn = None
            return
        t = time.monotonic()
        self.answer_s.append(t - t_ask)
        for hp in answer:
            seen = self.obs.setdefault(hp["Host"], [])
            if not seen or seen[-1][1] != hp["Score"]:
                seen.append((t, hp["Score"]))

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def stop(self) -> None:
        from integration.sandbox import terminate
        terminate(self.proc)


# -- one measurement ------------------------------------------------------------
def freshness(chassis: dict, obs: dict, t0: float, t1: float) -> dict:
    """Per change handed to publish() in [t0, t1): seconds until an answer showed the
    score of the first committed state at or after it (a change a later one
    superseded before it was sent is reflected by that later state)."""
    samples, missing, ambiguous = [], 0, 0
    for c in chassis.values():
        host = hostname(c["i"])
        score = {s: sc for s, _, sc in c["changes"]}
        carried = sorted(s for s, _ in c["committed"])
        seen = obs.get(host, [])
        times = [t for t, _ in seen]
        for state, t, _ in c["changes"]:
            if not t0 <= t < t1:
                continue
            j = bisect.bisect_left(carried, state)
            if j == len(carried):
                missing += 1
                continue
            want = score[carried[j]]
            k = bisect.bisect_right(times, t) - 1
            if k >= 0 and seen[k][1] == want:
                ambiguous += 1              # already shown by an older state: not counted
                continue
            hit = next((tt for tt, sc in seen[k + 1:] if sc == want), None)
            if hit is None:
                missing += 1
            else:
                samples.append(hit - t)
    return {"samples": samples, "missing": missing, "ambiguous": ambiguous}


def _replies(conns: list, kind: str, timeout: float, label: str, doing: str) -> list:
    """Each worker's next message, which must be (`kind`, value): the values. `doing`:
    what a worker silent for `timeout` s did not do."""
    values = []
    for c in conns:
        if not c.poll(timeout):
            raise TimeoutError(f"{label}: a worker did not {doing} within {timeout:.0f} s")
        msg = c.recv()
        if msg[0] != kind:
            raise RuntimeError(f"{label}: worker failed: {msg[1]}")
        values.append(msg[1])
    return values


def measure(label: str, members: list[str], creds: dict, servers: dict[str, int],
            leader: str, extenders: dict[str, tuple[str, tuple | None]], feed_s: float,
            seed: int, logdir: Path, log) -> dict:
    """The feed against `members`; `servers` name -> ovsdb-server pid (CPU);
    `leader` the name whose CPU per transaction is reported."""
    ctx = multiprocessing.get_context("fork")
    per = [list(range(w, CHASSIS, WORKERS)) for w in range(WORKERS)]
    procs, conns, exts = [], [], []
    try:
        t_setup = time.monotonic()
        for ids in per:
            parent, child = ctx.Pipe()
            spec = {"chassis": ids, "members": members, "seed": seed,
                    "creds": {chassis_name(i): creds[chassis_name(i)] for i in ids}}
            p = ctx.Process(target=_worker_main, args=(child, spec), daemon=True)
            p.start()
            child.close()
            procs.append(p)
            conns.append(parent)
        _replies(conns, "ready", 150, label, "connect its chassis")
        t_conn = time.monotonic() - t_setup
        exts = [Extender(n, r, cr, logdir) for n, (r, cr) in extenders.items()]
        for e in exts:
            e.wait_synced(CHASSIS)
        log(f"clusterdb {label}: {CHASSIS} chassis connected and in sync in {t_conn:.1f} s;"
            f" extenders synced; feed for {feed_s:.0f} s")
        body = json.dumps({"Pod": PROBE_POD,
                           "NodeNames": [hostname(i) for i in range(CHASSIS)]}).encode()
        for e in exts:
            e.probe(body)
        pids = {**servers, **{f"extender-{e.name}": e.proc.pid for e in exts}}
        cpu0 = {n: proc_cpu_s(p) for n, p in pids.items()}
        idle0, total0 = host_cpu()
        t0 = time.monotonic() + 0.5
        t_feed_end, t_end = t0 + feed_s, t0 + feed_s + DRAIN_S
        for c in conns:
            c.send(("go", t0, t_feed_end, t_end))
        nxt = time.monotonic()
        while time.monotonic() < t_end:
            for e in exts:
                e.probe(body)
            nxt += POLL_S
            time.sleep(max(0.0, nxt - time.monotonic()))
        cpu1 = {n: proc_cpu_s(p) for n, p in pids.items()}
        idle1, total1 = host_cpu()
        results = _replies(conns, "done", 60, label, "report")
        health = {e.name: e.healthz() for e in exts}
    finally:
        for e in exts:
            e.stop()
        for c in conns:
            try:
                c.send(("stop",))
            except OSError:
                pass
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
    chassis = {k: v for r in results for k, v in r["chassis"].items()}
    window = t_end - t0
    lat = [s for c in chassis.values() for t, s in c["latency"] if t0 <= t < t_end]
    committed = sum(1 for c in chassis.values() for _, t in c["committed"] if t0 <= t < t_end)
    # changes due before the feed's end but handed over later (a late loop) count too
    n_changes = sum(1 for c in chassis.values() for _, t, _ in c["changes"] if t0 <= t < t_end)
    lag = [x * 1000 for r in results for x in r["lag"]]
    # per chassis: peak transactions in any 10 s window, smallest gap between two
    peak, min_gap = 0.0, float("inf")
    for c in chassis.values():
        st = [t for t in c["starts"] if t0 <= t < t_end]
        for a, b in zip(st, st[1:]):
            min_gap = min(min_gap, b - a)
        for k, t in enumerate(st):
            peak = max(peak, (bisect.bisect_left(st, t + 10.0) - k) / 10.0)
    chg_peak = 0.0
    for c in chassis.values():
        ct = [t for _, t, _ in c["changes"] if t0 <= t < t_end]
        for k, t in enumerate(ct):
            chg_peak = max(chg_peak, (bisect.bisect_left(ct, t + 10.0) - k) / 10.0)
    fresh = {e.name: freshness(chassis, e.obs, t0, t_end) for e in exts}
    cpu = {n: cpu1[n] - cpu0[n] for n in pids}
    return {
        "label": label, "chassis": len(chassis), "feed_s": feed_s, "window_s": window,
        "connect_s": [round(t_conn, 1)], "changes": n_changes, "committed": committed,
        "lag_ms": lag, "idle": idle1 - idle0, "jiffies": total1 - total0,
        "commit_ms": [x * 1000 for x in lat],
        "refused": sum(c["refused"] for c in chassis.values()),
        "failures": sum(c["failures"] for c in chassis.values()),
        "reverted": sum(c["reverted"] for c in chassis.values()),
        "repeats": sum(c["repeats"] for c in chassis.values()),
        "left_pending": sum(c["pending"] for c in chassis.values()),
        "chassis_peak_tx_per_s": peak, "chassis_min_gap_s": min_gap,
        "chassis_peak_changes_per_s": chg_peak,
        "fresh": {n: {"ms": [x * 1000 for x in f["samples"]], "missing": f["missing"],
                      "ambiguous": f["ambiguous"]} for n, f in fresh.items()},
        "answer_ms": {e.name: [x * 1000 for x in e.answer_s] for e in exts},
        "probe_failures": {e.name: e.failed for e in exts},
        "cpu_s": cpu, "leader": [leader], "leader_cpu_s": cpu[leader],
        "workers_cpu_s": sum(r["cpu_s"] for r in results),
        "workers_wakeups": sum(r["wakeups"] for r in results),
        "rx_bytes": sum(r["rx_bytes"] for r in results),
        "extender_health": health,
    }


def combine(parts: list[dict]) -> dict:
    """One leg from its alternated parts: counts and CPU add up, samples pool."""
    out = dict(parts[0])
    for m in parts[1:]:
        for k, v in m.items():
            if k in ("label", "chassis", "extender_health"):
                continue
            if k == "chassis_min_gap_s":
                out[k] = min(out[k], v)
            elif k in ("chassis_peak_tx_per_s", "chassis_peak_changes_per_s"):
                out[k] = max(out[k], v)
            elif k in ("fresh",):
                out[k] = {n: {"ms": out[k][n]["ms"] + f["ms"],
                              "missing": out[k][n]["missing"] + f["missing"],
                              "ambiguous": out[k][n]["ambiguous"] + f["ambiguous"]}
                          for n, f in v.items()}
            elif isinstance(v, dict):
                out[k] = {n: out[k][n] + x for n, x in v.items()}
            else:
                out[k] = out[k] + v
    out["parts"] = len(parts)
    return out


def host_cpu() -> tuple[int, int]:
    """(idle, total) jiffies of the whole machine, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return f[3] + f[4], sum(f[:8])


def _p(xs, q):
    v = percentile(xs, q)
    return None if v is None else round(v, 1)


def summary(m: dict) -> dict:
    """A leg's figures for results.json's detail: rates and percentiles, no raw lists."""
    skip = ("commit_ms", "fresh", "answer_ms", "lag_ms", "idle", "jiffies", "rx_bytes")
    s = {k: v for k, v in m.items() if k not in skip}
    w = m["window_s"]
    s.update({
        "window_s": round(w, 1),
        # both over the feed's time: the drain commits what the feed handed over
        "tx_per_s": round(m["committed"] / m["feed_s"], 2),
        "changes_per_s": round(m["changes"] / m["feed_s"], 2),
        "chassis_mean_tx_per_s": round(m["committed"] / m["chassis"] / m["feed_s"], 3),
        "chassis_rx_bytes_per_s": round(m["rx_bytes"] / m["chassis"] / w, 1),
        "leader_cpu_ms_per_tx": (round(1000 * m["leader_cpu_s"] / m["committed"], 3)
                                 if m["committed"] else None),
        "host_busy": round(1 - m["idle"] / max(1, m["jiffies"]), 3),
        "feed_lag_ms": {"p50": _p(m["lag_ms"], 50), "p99": _p(m["lag_ms"], 99),
                        "max": _p(m["lag_ms"], 100)},
        "cpu_s": {n: round(v, 2) for n, v in m["cpu_s"].items()},
        "leader_cpu_s": round(m["leader_cpu_s"], 2),
        "workers_cpu_s": round(m["workers_cpu_s"], 2),
        "chassis_peak_tx_per_s": round(m["chassis_peak_tx_per_s"], 2),
        "chassis_min_gap_s": round(m["chassis_min_gap_s"], 3),
        "commit_ms": {"n": len(m["commit_ms"]), "p50": _p(m["commit_ms"], 50),
                      "p90": _p(m["commit_ms"], 90), "p99": _p(m["commit_ms"], 99),
                      "max": _p(m["commit_ms"], 100)},
        "fresh_ms": {n: {"n": len(f["ms"]), "missing": f["missing"],
                         "ambiguous": f["ambiguous"], "p50": _p(f["ms"], 50),
                         "p90": _p(f["ms"], 90), "p99": fresh_p99(f),
                         "p99_reflected": _p(f["ms"], 99), "max": _p(f["ms"], 100)}
                     for n, f in m["fresh"].items()},
        "answer_ms": {n: {"n": len(a), "p50": _p(a, 50), "p99": _p(a, 99)}
                      for n, a in m["answer_ms"].items()},
    })
    return s


def fresh_p99(f: dict) -> float | None:
    """p99 with every change never reflected counted as infinitely late; None when
    that p99 is one of them (more than 1% never reflected within the window)."""
    xs = f["ms"] + [float("inf")] * f["missing"]
    v = percentile(xs, 99)
    return None if v is None or v == float("inf") else round(v, 1)


def leader_term(sb, i: int) -> tuple[str, str]:
    st = sb.status(i)
    term = next((ln.split(":", 1)[1].strip() for ln in st.splitlines()
                 if ln.startswith("Term:")), "?")
    return sb.members[i].name, term


def extender_rebuild(sizes=(CHASSIS, 1000, 10000), repeats: int = 5, log=print) -> dict:
    """The extender's reader at 200, 1,000 and 10,000 chassis: the real
    `ClusterDbView` (its IDL thread) on a local standalone server (unix socket,
    no SSL) holding that many Chassis rows; one row changed at a time with
    ovsdb-client, and the time until `.view` shows it. With nothing else
    changing, that is one update received plus one rebuild of the whole view,
    which ClusterDbView does on every change."""
    import logging
    import ovs.jsonrpc
    import ovs.stream
    from integration.sandbox import sh
    from ovsfoot import contract
    from ovsfoot.scheduler.clusterview import ClusterDbView
    d = Path(tempfile.mkdtemp(prefix="ovsfoot-bench-reader-"))
    db, sock = d / "reader.db", d / "db.sock"
    sh("ovsdb-tool", "create", str(db), contract.cluster_schema_path())
    server = subprocess.Popen(["ovsdb-server", str(db), f"--remote=punix:{sock}",
                               f"--unixctl={d / 'ctl'}", "--no-chdir"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    remote = f"unix:{sock}"
    out, have = {}, 0
    quiet = logging.getLogger("ovsfoot.scheduler.clusterview")
    level = quiet.level
    quiet.setLevel(logging.ERROR)           # "waiting for the cluster database": it is coming
    rpc = None

    def transact(ops):
        err, reply = rpc.transact_block(ovs.jsonrpc.Message.create_request(
            "transact", [contract.CLUSTER_DB, *ops]))
        if err or reply.error or any("error" in r for r in reply.result if r):
            raise RuntimeError("reader table: transaction failed: "
                               f"{err or reply.error or reply.result}")
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        err, stream = ovs.stream.Stream.open_block(ovs.stream.Stream.open(remote), 5000)
        if err:
            raise OSError(err, f"cannot connect to {remote}")
        rpc = ovs.jsonrpc.Connection(stream)
        for n in sizes:
            rows = [{"op": "insert", "table": "Chassis",
                     "row": {"name": f"r{i:05d}", "hostname": f"r{i:05d}", "footprint": "light",
                             "elephants": 0, "heavy_ports": 0, "updated": 1}}
                    for i in range(have, n)]
            for k in range(0, len(rows), 2000):
                transact(rows[k:k + 2000])
            have = n
            view = ClusterDbView(remote).start()
            t = time.monotonic()
            while len(view.view.by_key) < n:
                if time.monotonic() - t > 60:
                    raise TimeoutError(f"the reader did not sync {n} rows in 60 s")
                time.sleep(0.01)
            sync = time.monotonic() - t
            took = []
            for r in range(repeats):
                host = f"r{(r * 7919) % n:05d}"
                value = 1 + r + n % 97
                t = time.monotonic()
                transact([{"op": "update", "table": "Chassis", "where": [["name", "==", host]],
                           "row": {"elephants": value}}])
                while view.view.by_key[host].elephants != value:
                    if time.monotonic() - t > 30:
                        raise TimeoutError(f"the reader did not see a change in 30 s at {n}")
                    time.sleep(0.002)
                took.append((time.monotonic() - t) * 1000)
            view.stop()
            out[n] = {"sync_s": round(sync, 2), "change_ms": [round(x, 1) for x in took],
                      "median_ms": round(sorted(took)[len(took) // 2], 1)}
            log(f"clusterdb reader: {n:,} chassis: synced in {sync:.1f} s; one change "
                f"seen after {out[n]['median_ms']} ms (median of {repeats})")
    finally:
        quiet.setLevel(level)
        if rpc is not None:
            rpc.close()
        server.terminate()
        server.wait(10)
        shutil.rmtree(d, ignore_errors=True)
    return out


def seed(admin: str) -> None:
    """Every chassis' row as its first publish() would write it (one transaction on
    an admin socket), so that 200 chassis connecting find their row and send
    nothing: the legs measure the steady state, not a start-up storm."""
    from integration.sandbox import sh
    from ovsfoot.contract import CLUSTER_DB
    now = time.time_ns() // 1_000_000
    ops = [{"op": "insert", "table": "Chassis",
            "row": {"name": chassis_name(i), "hostname": hostname(i), "footprint": "light",
                    "elephants": 0, "heavy_ports": 0, "updated": now}}
           for i in range(CHASSIS)]
    out = json.loads(sh("ovsdb-client", "--timeout=30", "transact", admin,
                        json.dumps([CLUSTER_DB, *ops])))
    bad = [r for r in out if isinstance(r, dict) and "error" in r]
    if bad:
        raise RuntimeError(f"seeding the Chassis rows failed: {bad[:2]}")


def clear(admin: str) -> None:
    """Deletes what the previous part's chassis wrote."""
    from integration.sandbox import sh
    from ovsfoot.contract import CLUSTER_DB
    sh("ovsdb-client", "--timeout=30", "transact", admin, json.dumps(
        [CLUSTER_DB, {"op": "delete", "table": "Chassis", "where": []},
         {"op": "delete", "table": "Workload_Class", "where": []}]))


def run(quick: bool = False, log=print) -> list[Result]:
    from integration.clusterdb import ClusterDbSandbox
    from integration.programs import require
    # ovsdb-client (relay, bootstrap) comes with ovsdb-server (openvswitch-common)
    require("ip", "openssl", "ss", "ovs-pki", "ovsdb-tool", "ovsdb-server", "ovs-appctl")
    part_s, raft_s = (6.0, 8.0) if quick else (15.0, 20.0)
    work = Path(tempfile.mkdtemp(prefix="ovsfoot-bench-clusterdb-"))
    sb = ClusterDbSandbox(work / "db", members=3, ssl=True)
    standalone = wrelay = None
    ok = False
    parts: dict[str, list[dict]] = {}
    try:
        t = time.monotonic()
        sb.start()
        creds = make_creds(sb, [chassis_name(i) for i in range(CHASSIS)] + ["extender"])
        relay = sb.relay("relay")
        wrelay = WriterRelay(sb).start()
        standalone = Standalone(sb).start()
        log(f"clusterdb: 3 raft members, a relay for the extenders, one for the chassis, a "
            f"standalone server, {len(creds)} certificates in {time.monotonic() - t:.0f} s")
        servers = {m.name: int((m.dir / "ovsdb-server.pid").read_text()) for m in sb.members}
        servers.update({"relay": int((sb.workdir / "relay" / "ovsdb-server.pid").read_text()),
                        "wrelay": wrelay.pid})
        extenders = {"direct": (sb.remote, creds["extender"]), "relay": (relay, None)}
        direct = [f"{m.ip}:6647" for m in sb.members]

        def raft(label, members, feed_s):
            li = sb.leader()
            admin = sb.members[li].admin
            clear(admin)
            seed(admin)
            m = measure(label, members, creds, servers, sb.members[li].name, extenders,
                        feed_s, 1 + len(parts.get(label, [])), work, log)
            m["leader_term"] = [leader_term(sb, li), leader_term(sb, sb.leader() or 0)]
            parts.setdefault(label, []).append(m)

        def alone(feed_s):
            clear(standalone.admin)
            seed(standalone.admin)
            m = measure("standalone", [standalone.remote], creds, {"standalone": standalone.pid},
                        "standalone", {"direct": (f"ssl:{standalone.remote}", creds["extender"])},
                        feed_s, 1 + len(parts.get("standalone", [])), work, log)
            parts.setdefault("standalone", []).append(m)
        # the relayed cluster and the baseline alternate, so that the machine's
        # noise falls on both; then the direct leg (single part)
        for _ in range(2):
            raft("raft_relay", [wrelay.remote], part_s)
            alone(part_s)
        raft("raft", direct, raft_s)
        for x in (wrelay, standalone):
            x.stop()
        reader = extender_rebuild(log=log)
        ok = True
    finally:
        for x in (wrelay, standalone):
            if x is not None:
                x.stop()
        sb.destroy()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"clusterdb: logs kept in {work}")
    L = {n: summary(combine(ps)) for n, ps in parts.items()}
    S = L["standalone"]
    for n, x in L.items():
        f = x["fresh_ms"]
        log(f"clusterdb {n}: {x['tx_per_s']:.1f} tx/s committed for {x['changes_per_s']:.1f} "
            f"changes/s; commit p50/p99 {x['commit_ms']['p50']}/{x['commit_ms']['p99']} ms; "
            "freshness p99 " + ", ".join(f"{e} {v['p99']} ms" for e, v in f.items())
            + f"; leader {x['leader_cpu_ms_per_tx']} ms CPU/tx; host busy {x['host_busy']}")
    out = results(L, S, reader)
    out[0].detail["tree"] = tree_state()
    return out


def tree_state() -> dict:
    """The commit measured, and the files of ovsfoot/ that differed from it (the
    tree is shared: others' uncommitted changes are part of what ran)."""
    git = lambda *a: subprocess.run(["git", "-C", str(REPO), *a], capture_output=True,  # noqa: E731
                                    text=True).stdout.strip()
    changed = git("status", "--porcelain", "--", "ovsfoot").splitlines()
    return {"head": git("rev-parse", "--short", "HEAD"), "modified": [ln[3:] for ln in changed]}


def results(L: dict, S: dict, reader: dict) -> list[Result]:
    C = L["raft"]
    s50, s99 = S["commit_ms"]["p50"], S["commit_ms"]["p99"]
    fs = S["fresh_ms"]["direct"]["p99"]
    base_tx = S["leader_cpu_ms_per_tx"]
    ok_rate = all(x["chassis_peak_tx_per_s"] <= 1.0
                  and x["chassis_min_gap_s"] >= 0.98 * MIN_INTERVAL for x in L.values())
    peak = max(x["chassis_peak_tx_per_s"] for x in L.values())
    peak_chg = max(x["chassis_peak_changes_per_s"] for x in L.values())
    out = [
        Result("clusterdb_chassis_tx_per_s", peak, "tx/s per chassis", peak_chg,
               "changes/s handed to publish(), the same measure",
               ratio(peak, peak_chg),
               f"<= 1 tx/s per chassis (peak 10 s window, any leg; {CHASSIS} chassis)", ok_rate,
               detail={n: {"chassis": x["chassis"], "peak_tx_per_s": x["chassis_peak_tx_per_s"],
                           "min_gap_s": x["chassis_min_gap_s"],
                           "mean_tx_per_s": x["chassis_mean_tx_per_s"],
                           "cluster_tx_per_s": x["tx_per_s"],
                           "cluster_changes_per_s": x["changes_per_s"]}
                       for n, x in L.items()}),
        Result("clusterdb_chassis_rx_bytes_per_s", C["chassis_rx_bytes_per_s"], "B/s per chassis",
               S["chassis_rx_bytes_per_s"], "the same on one standalone server",
               ratio(C["chassis_rx_bytes_per_s"], S["chassis_rx_bytes_per_s"]),
               "(informational: what each chassis receives)", None,
               detail={n: x["chassis_rx_bytes_per_s"] for n, x in L.items()}),
        Result("clusterdb_commit_p50", C["commit_ms"]["p50"], "ms", s50,
               "the same feed on one standalone server", ratio(C["commit_ms"]["p50"], s50),
               "(p50, informational)", None, detail=L),
    ]
    names = {"raft": ("clusterdb", "chassis and extender on the members"),
             "raft_relay": ("clusterdb_relayed", "chassis on a relay, extender on a relay")}
    for leg, (prefix, what) in names.items():
        if leg not in L:
            continue
        x = L[leg]
        ext = "relay" if leg == "raft_relay" else "direct"
        f = x["fresh_ms"][ext]["p99"]
        c99 = x["commit_ms"]["p99"]
        tx = x["leader_cpu_ms_per_tx"]
        out += [
            Result(f"{prefix}_commit_p99", c99, "ms", s99, "the same feed on one standalone server",
                   ratio(c99, s99), f"(informational; {what}; includes the 1 s min_interval)",
                   None),
            Result(f"{prefix}_view_fresh_p99", f, "ms", fs,
                   "the same feed, extender on one standalone server", ratio(f, fs),
                   f"p99 <= 2 s ({what})", f is not None and f <= 2000,
                   detail={"extenders": x["fresh_ms"], "standalone": S["fresh_ms"]}),
            Result(f"{prefix}_leader_cpu_per_tx", tx, "ms CPU/tx", base_tx,
                   "standalone server's CPU per transaction, same feed", ratio(tx, base_tx),
                   f"(informational; {what})", None,
                   detail={"cpu_s": x["cpu_s"], "committed": x["committed"],
                           "window_s": x["window_s"], "leader": x["leader"],
                           "leader_term": x.get("leader_term"),
                           "standalone_cpu_s": S["cpu_s"], "standalone_committed": S["committed"]}),
        ]
    small, big = reader[min(reader)]["median_ms"], reader[max(reader)]["median_ms"]
    out.append(Result("clusterdb_extender_view_10k_ms", big, "ms", small,
                      f"the same with {min(reader)} chassis",
                      ratio(big, small), "(informational: the reader's cost of one change)",
                      None, detail={str(n): v for n, v in reader.items()}))
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    for r in run(quick="--quick" in sys.argv, log=lambda m: print(m, file=sys.stderr)):
        print(r.name, r.value, r.unit, r.baseline, r.ratio, r.met)
        if r.detail and "-v" in sys.argv:
            print(json.dumps(r.detail, indent=1, default=str))
