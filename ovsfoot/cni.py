"""`ovsfoot-cni`: a chained CNI plugin (spec 1.1.0; also 1.0.0, 0.4.0, 0.3.x) that tags a
pod's OVS port with its workload.

Put it after the plugin that plugs the pod into OVS (ovn-kubernetes, ovs-cni, ...):

    {"cniVersion": "1.1.0", "name": "podnet", "plugins": [
        {"type": "ovn-k8s-cni-overlay", ...},
        {"type": "ovsfoot-cni", "ovsdb": "unix:/var/run/openvswitch/db.sock",
         "logFile": "/var/log/ovsfoot-cni.log"}]}

ADD finds the pod's OVS Interface (the host-side interfaces of `prevResult`, the
iface-id `<namespace>_<pod>` as ovn-kubernetes names it, `external_ids:sandbox`,
or a MAC), sets `external_ids:ovsfoot-workload` and the marker `ovsfoot-cni=<container
id>`, and prints `prevResult` unchanged. The running agent re-reads the Interface at
once and publishes the workload's learned class before the pod sends a byte.
ADD never takes over an Interface whose identity someone else set: another
container's marker, or `ovsfoot-workload` without a marker (an operator's); it logs
that and passes the result through. DEL removes the marker where it is this
container's, and `ovsfoot-workload` with it unless that is no longer what this
container's ADD set (an operator changed it since); it never touches an identity
it did not set. CHECK verifies what ADD did (and accepts what ADD passed through).

CNI 1.1.0 adds STATUS and GC. STATUS always answers ready (exit 0, nothing printed):
ovsfoot trouble never keeps a pod from starting, ADD passes the result through; it
does not even ask OVSDB, as runtimes call it often. GC removes the marker, and
`ovsfoot-workload` with it, from every Interface whose marker names a container that
is not in `cni.dev/valid-attachments` (each in one transaction that verifies the
marker is still that container's); without that key it removes nothing. It assumes
it is the only runtime and network tagging this OVS: a marker another runtime's
network set looks stale to it. STATUS and GC with a cniVersion older than 1.1.0 are
code 1, as CHECK with 0.3.x.

The workload, first match wins: `runtimeConfig.ovsfoot.workload`; CNI_ARGS
`OVSFOOT_WORKLOAD`; an owner name (`runtimeConfig.ovsfoot.owner` or CNI_ARGS
`OVSFOOT_OWNER`) as `<namespace>/<owner>`; `<K8S_POD_NAMESPACE>/<K8S_POD_NAME>` with
the ReplicaSet / DaemonSet / StatefulSet suffix stripped (the agent's own rule); the
network config's `workload`.

ovsfoot trouble (no OVSDB, no Interface found, a timeout) never fails a pod: it is
logged (stderr and `logFile`) and the result passed through. Malformed input gets a
CNI error object on stdout and exit status 1, with code 1 (incompatible version), 4
(invalid environment variables), 6 (undecodable stdin), 7 (invalid network config,
also a malformed `prevResult`) or 100 (CHECK: the tag is missing or different); any
other failure (a bug) code 101, with the traceback in the log, never a bare traceback.

Network config keys (all optional): `ovsdb` (remote; default unix:$OVS_RUNDIR/db.sock),
`timeout` (seconds for OVSDB, > 0 and <= 60, default 2), `logFile`, `waitForClass`
(seconds ADD may wait for the agent's class, only to log it; 0 to 60, default 0),
`workload`, and for an `ssl:` `ovsdb` the files `sslPrivateKey`, `sslCertificate` and
`sslCaCert` (all three). Out of range or non-finite (NaN, 1e309) is code 7, before
anything changes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
import traceback

CURRENT = "1.1.0"
SUPPORTED = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
# the cniVersion of an error object when the request's is unknown (undecodable or
# unsupported): one runtimes of 1.0 and 1.1 both read
ERROR_VERSION = "1.0.0"
SINCE = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}   # verbs newer than ADD/DEL
VALID_ATTACHMENTS = "cni.dev/valid-attachments"

E_INCOMPATIBLE = 1
E_ENV = 4
E_DECODE = 6
E_CONFIG = 7
E_CHECK = 100
E_INTERNAL = 101

SSL_KEYS = ("sslPrivateKey", "sslCertificate", "sslCaCert")   # as configure_ssl takes them
MAX_SECONDS = 60.0          # timeout and waitForClass (a runtime waits minutes for a plugin)

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_CONTAINER_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")

log = logging.getLogger("ovsfoot.cni")


def printable(value, limit: int = 80) -> str:
    from ovsfoot.contract import printable as p
    return p(value, limit)


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def _setup_logging(log_file: str | None) -> None:
    fmt = logging.Formatter("%(asctime)s|ovsfoot-cni[%(process)d]|%(levelname)s|%(message)s")
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        try:
            handlers.append(logging.FileHandler(log_file))
        except OSError as e:
            print(f"ovsfoot-cni: cannot open log file {log_file}: {e}", file=sys.stderr)
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)


def parse_cni_args(text: str) -> dict[str, str]:
    """CNI_ARGS: `K=V;K=V` (CNI_ERROR 4 if malformed)."""
    out = {}
    for item in filter(None, text.split(";")):
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise CniError(E_ENV, "invalid CNI_ARGS", f"{item!r} is not KEY=VALUE")
        out[k] = v
    return out


def parse_config(raw: str) -> dict:
    return check_config(decode_config(raw))


def decode_config(raw: str) -> dict:
    """The network config, as far as its cniVersion (a supported one)."""
    try:
        cfg = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(E_DECODE, "cannot decode the network configuration", str(e)) from None
    except RecursionError:
        raise CniError(E_DECODE, "cannot decode the network configuration",
                       "stdin is nested too deeply") from None
    if not isinstance(cfg, dict):
        raise CniError(E_DECODE, "cannot decode the network configuration",
                       f"stdin is a JSON {type(cfg).__name__}, not an object")
    version = cfg.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(E_CONFIG, "invalid network configuration", "cniVersion is missing")
    if version not in SUPPORTED:
        raise CniError(E_INCOMPATIBLE, f"incompatible CNI version {version[:40]}",
                       f"ovsfoot-cni supports {', '.join(SUPPORTED)}")
    return cfg


def check_config(cfg: dict) -> dict:
    """The rest of the network config, checked (CNI_ERROR 7)."""
    name = cfg.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise CniError(E_CONFIG, "invalid network configuration",
                       "name is missing or not a valid network name")
    types = {"ovsdb": str, "logFile": str, "workload": str, "timeout": (int, float),
             **{k: str for k in SSL_KEYS},
             "waitForClass": (int, float), "prevResult": dict, "runtimeConfig": dict,
             VALID_ATTACHMENTS: list}
    for key, kind in types.items():
        if key in cfg and not isinstance(cfg[key], kind) or isinstance(cfg.get(key), bool):
            raise CniError(E_CONFIG, "invalid network configuration", f"{key} has the wrong type")
    for key, zero in (("timeout", False), ("waitForClass", True)):
        if key in cfg:
            try:
                v = float(cfg[key])
            except OverflowError:           # an integer of 400 digits
                v = math.inf
            if not (math.isfinite(v) and (v >= 0 if zero else v > 0) and v <= MAX_SECONDS):
                raise CniError(E_CONFIG, "invalid network configuration",
                               f"{key} must be a number of seconds {'>=' if zero else '>'} 0 "
                               f"and <= {MAX_SECONDS:g}, not {str(cfg[key])[:40]}")
    rc = cfg.get("runtimeConfig", {}).get("ovsfoot", {})
    if not isinstance(rc, dict) or any(not isinstance(rc.get(k, ""), str)
                                       for k in ("workload", "owner")):
        raise CniError(E_CONFIG, "invalid network configuration",
                       "runtimeConfig.ovsfoot must be an object with string workload/owner")
    return cfg


def _need(env, *names: str) -> None:
    for n in names:
        if not env.get(n):
            raise CniError(E_ENV, f"{n} is missing", f"{env.get('CNI_COMMAND')} needs {n}")
    cid = env.get("CNI_CONTAINERID")
    if cid is not None and "CNI_CONTAINERID" in names and not _CONTAINER_RE.match(cid):
        raise CniError(E_ENV, "invalid CNI_CONTAINERID", repr(cid))


def workload_for(cfg: dict, args: dict[str, str]) -> str | None:
    """The pod's workload identity (see the module doc), validated."""
    from ovsfoot.contract import ContractError, pod_workload, validate_workload

    rc = cfg.get("runtimeConfig", {}).get("ovsfoot", {})
    ns, pod = args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", "")
    candidates = [(rc.get("workload"), E_CONFIG, "runtimeConfig.ovsfoot.workload"),
                  (args.get("OVSFOOT_WORKLOAD"), E_ENV, "CNI_ARGS OVSFOOT_WORKLOAD")]
    for owner, code, where in ((rc.get("owner"), E_CONFIG, "runtimeConfig.ovsfoot.owner"),
                               (args.get("OVSFOOT_OWNER"), E_ENV, "CNI_ARGS OVSFOOT_OWNER")):
        if owner:
            candidates.append((f"{ns}/{owner}" if ns else owner, code, where))
    if ns and pod:
        candidates.append((pod_workload(ns, pod), E_ENV, "K8S_POD_NAMESPACE/K8S_POD_NAME"))
    candidates.append((cfg.get("workload"), E_CONFIG, "workload"))
    for value, code, where in candidates:
        if value:
            try:
                return validate_workload(value)
            except ContractError as e:
                raise CniError(code, f"invalid workload from {where}", str(e)) from None
    return None


def check_prev(prev: dict) -> list[dict]:
    """The interfaces of `prevResult`, checked: a list of objects whose name, mac and
    sandbox are strings (CNI_ERROR 7 otherwise)."""
    ifaces = prev.get("interfaces")
    if ifaces is None:
        return []
    if not isinstance(ifaces, list) or not all(isinstance(i, dict) for i in ifaces):
        raise CniError(E_CONFIG, "invalid prevResult", "interfaces must be a list of objects")
    for n, i in enumerate(ifaces):
        for key in ("name", "mac", "sandbox"):
            if i.get(key) is not None and not isinstance(i[key], str):
                raise CniError(E_CONFIG, "invalid prevResult",
                               f"interfaces[{n}].{key} must be a string")
    return ifaces


def locate(node, prev: dict, env, args: dict[str, str]) -> tuple[str, str] | None:
    """(Interface name, how it was found) of the pod's OVS port, or None."""
    infos = node.interfaces()
    ifaces = check_prev(prev)
    host = [i for i in ifaces if not i.get("sandbox")]
    guest = [i for i in ifaces if i.get("sandbox") and i.get("name") == env.get("CNI_IFNAME")]
    ns, pod = args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")

    def norm(m):
        return str(m).strip().lower()
    host_macs = {norm(i["mac"]) for i in host if i.get("mac")}
    guest_macs = {norm(i["mac"]) for i in guest if i.get("mac")}
    tries = [
        ("prevResult host interface", lambda i: i.name in {h.get("name") for h in host}),
        ("iface-id", lambda i: bool(ns and pod) and i.iface_id == f"{ns}_{pod}"),
        ("external_ids:sandbox", lambda i: i.external_ids.get("sandbox")
         == env.get("CNI_CONTAINERID")),
        ("host-side MAC", lambda i: bool(i.mac_in_use) and norm(i.mac_in_use) in host_macs),
        ("pod MAC", lambda i: any(norm(i.external_ids.get(k, "")) in guest_macs
                                  for k in ("attached-mac", "attached_mac"))),
    ]
    for how, match in tries:
        found = [i.name for i in infos if match(i)]
        if len(found) == 1:
            return found[0], how
        if found:
            log.warning("%d Interfaces match by %s (%s): trying the next way",
                        len(found), how, ", ".join(found))
    return None


def _owner(ids: dict[str, str], cid: str) -> str | None:
    """Who else set the Interface's identity, in words; None: nobody, or this container."""
    from ovsfoot import api
    marker = ids.get(api.CNI_MARKER_KEY)
    if marker is not None and marker != cid:
        return (f"its {api.CNI_MARKER_KEY} marker is another container's "
                f"({printable(marker)}, {api.WORKLOAD_KEY}="
                f"{printable(ids.get(api.WORKLOAD_KEY))})")
    if marker is None and api.WORKLOAD_KEY in ids:
        return (f"{api.WORKLOAD_KEY}={printable(ids[api.WORKLOAD_KEY])} was set by someone "
                f"else (an operator: no {api.CNI_MARKER_KEY} marker)")
    return None


def _edit_ids(node, iface: str, what: str, change):
    """`change(row, external_ids)` on `iface`'s row, in one transaction (`what`) that
    verifies external_ids; what `change` returned (on the last try)."""
    result = [None]

    def edit(txn):
        row = node.row(iface)
        row.verify("external_ids")
        result[0] = change(row, dict(row.external_ids))
    node.refresh()
    node.transact(what, edit)
    return result[0]


def claim(node, iface: str, workload: str, cid: str) -> str | None:
    """Sets the workload and this container's marker on `iface` in one transaction that
    verifies external_ids: unless someone else set its identity (then the reason, and
    nothing written), even if that happens between the read and the write."""
    from ovsfoot import api

    def change(row, ids) -> str | None:
        why = _owner(ids, cid)
        if why is None:
            row.setkey("external_ids", api.WORKLOAD_KEY, workload)
            row.setkey("external_ids", api.CNI_MARKER_KEY, cid)
        return why
    return _edit_ids(node, iface, f"claim {iface} for {cid}", change)


def release(node, iface: str, cid: str, expected: str | None) -> str | None:
    """Removes this container's marker from `iface`, and the workload unless it is no
    longer `expected` (what this container's ADD set; None: not known). In one
    transaction that verifies external_ids. What was left, in words, or None."""
    from ovsfoot import api

    def change(row, ids) -> str | None:
        if ids.get(api.CNI_MARKER_KEY) != cid:
            return "not this container's"
        row.delkey("external_ids", api.CNI_MARKER_KEY)
        have = ids.get(api.WORKLOAD_KEY)
        if have is not None and expected is not None and have != expected:
            return f"{api.WORKLOAD_KEY}={printable(have)} (ADD set {expected})"
        if have is not None:
            row.delkey("external_ids", api.WORKLOAD_KEY)
        return None
    return _edit_ids(node, iface, f"release {iface} from {cid}", change)


def _open_node(cfg: dict):
    from ovsfoot import api
    from ovsfoot.ovsdb import configure_ssl
    try:
        configure_ssl(*(cfg.get(k) for k in SSL_KEYS))
    except ValueError as e:            # ovsfoot trouble: logged, never fails the pod
        raise api.DatabaseUnavailable(f"SSL for {cfg.get('ovsdb')}: {e}") from None
    return api.Node(cfg.get("ovsdb"), timeout=float(cfg.get("timeout", 2.0)))


def cmd_add(cfg: dict, env, args: dict[str, str]) -> dict:
    from ovsfoot import api

    _need(env, "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
    if "prevResult" not in cfg:
        raise CniError(E_CONFIG, "invalid network configuration",
                       "ovsfoot-cni is a chained plugin: ADD needs prevResult")
    prev = cfg["prevResult"]
    check_prev(prev)
    cid = env["CNI_CONTAINERID"]
    workload = workload_for(cfg, args)
    pod = printable(f"{args.get('K8S_POD_NAMESPACE', '?')}/{args.get('K8S_POD_NAME', '?')}")
    if workload is None:
        log.warning("ADD %s: no pod namespace/name or owner given: nothing to tag", cid)
        return prev
    try:
        with _open_node(cfg) as node:
            found = locate(node, prev, env, args)
            if found is None:
                log.warning("ADD %s (pod %s): no OVS Interface found for it "
                            "(prevResult interfaces, iface-id, sandbox, MAC): not tagged",
                            cid, pod)
                return prev
            iface, how = found
            before = node.interface(iface).workload
            since = time.time_ns() // 1_000_000
            other = claim(node, iface, workload, cid)
            if other:
                log.warning("ADD %s (pod %s): Interface %s (found by %s) not tagged: %s; "
                            "passing the result through", cid, pod, iface, how, other)
                return prev
            klass = None
            wait = float(cfg.get("waitForClass", 0))
            if wait:
                klass = node.wait_class(iface, None if before == workload else since,
                                        wait).workload_class
            log.info("ADD %s (pod %s): Interface %s (found by %s) tagged %s=%s%s", cid, pod,
                     iface, how, api.WORKLOAD_KEY, workload,
                     f", learned class {klass}" if klass else "")
    except Exception as e:             # ovsfoot trouble never fails a pod
        log.warning("ADD %s (pod %s): not tagged, passing the result through: %s",
                    cid, pod, e, exc_info=not isinstance(e, api.Error))
    return prev


def cmd_del(cfg: dict, env, args: dict[str, str]) -> None:
    from ovsfoot import api

    _need(env, "CNI_CONTAINERID", "CNI_IFNAME")
    cid = env["CNI_CONTAINERID"]
    try:
        expected = workload_for(cfg, args)      # what this container's ADD set
    except CniError:
        expected = None
    try:
        with _open_node(cfg) as node:
            mine = [i.name for i in node.interfaces()
                    if i.external_ids.get(api.CNI_MARKER_KEY) == cid]
            for iface in mine:
                kept = release(node, iface, cid, expected)
                if kept:
                    log.warning("DEL %s: Interface %s: removed the %s marker, left %s",
                                cid, iface, api.CNI_MARKER_KEY, kept)
                else:
                    log.info("DEL %s: removed %s from Interface %s", cid, api.WORKLOAD_KEY,
                             iface)
            if not mine:
                log.info("DEL %s: no Interface tagged for it (already gone)", cid)
    except Exception as e:
        log.warning("DEL %s: could not clean up (%s); nothing to do for the pod", cid, e,
                    exc_info=not isinstance(e, api.Error))


def cmd_check(cfg: dict, env, args: dict[str, str]) -> None:
    from ovsfoot import api

    _need(env, "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
    if "prevResult" not in cfg:
        raise CniError(E_CONFIG, "invalid network configuration", "CHECK needs prevResult")
    check_prev(cfg["prevResult"])
    cid = env["CNI_CONTAINERID"]
    workload = workload_for(cfg, args)
    try:
        with _open_node(cfg) as node:
            found = locate(node, cfg["prevResult"], env, args)
            if found is None:
                log.warning("CHECK %s: no OVS Interface found for it: cannot verify", cid)
                return
            ids = node.interface(found[0]).external_ids
    except Exception as e:          # ovsfoot trouble never fails a pod
        log.warning("CHECK %s: cannot verify (%s)", cid, e,
                    exc_info=not isinstance(e, api.Error))
        return
    other = _owner(ids, cid)
    if other:
        log.info("CHECK %s: Interface %s: %s; ADD left it as is", cid, found[0], other)
        return
    have = (ids.get(api.WORKLOAD_KEY), ids.get(api.CNI_MARKER_KEY))
    if workload is not None and have != (workload, cid):
        raise CniError(E_CHECK, f"Interface {found[0]} is not tagged as ADD left it",
                       f"expected {api.WORKLOAD_KEY}={workload} {api.CNI_MARKER_KEY}={cid}, "
                       f"found {have[0]!r} {have[1]!r}")


def cmd_status(cfg: dict, env, args: dict[str, str]) -> None:
    """Ready, always: see the module doc."""


def valid_containers(cfg: dict) -> set[str] | None:
    """The container ids of `cni.dev/valid-attachments` (None: the key is absent);
    CNI_ERROR 7 unless it is a list of objects with a string containerID."""
    valid = cfg.get(VALID_ATTACHMENTS)
    if valid is None:
        return None
    if not all(isinstance(a, dict) and isinstance(a.get("containerID"), str) for a in valid):
        raise CniError(E_CONFIG, "invalid network configuration",
                       f"{VALID_ATTACHMENTS} must be a list of objects with a string "
                       f"containerID")
    return {a["containerID"] for a in valid}


def cmd_gc(cfg: dict, env, args: dict[str, str]) -> None:
    from ovsfoot import api

    valid = valid_containers(cfg)
    if valid is None:
        log.warning("GC: no %s given: nothing removed", VALID_ATTACHMENTS)
        return
    removed = 0
    try:
        with _open_node(cfg) as node:
            stale = [(i.name, i.external_ids[api.CNI_MARKER_KEY]) for i in node.interfaces()
                     if i.external_ids.get(api.CNI_MARKER_KEY, "") not in valid | {""}]
            for iface, cid in stale:
                try:
                    kept = release(node, iface, cid, None)
                except api.UnknownInterface:        # deleted meanwhile: nothing left to do
                    continue
                if kept:        # its marker changed meanwhile: a new ADD, leave it
                    log.info("GC: Interface %s: left as it is (%s)", iface, kept)
                    continue
                removed += 1
                log.info("GC: removed the %s marker of container %s, not among the %d valid "
                         "attachments, and %s from Interface %s", api.CNI_MARKER_KEY,
                         printable(cid), len(valid), api.WORKLOAD_KEY, iface)
    except Exception as e:          # ovsfoot trouble: GC again next time
        log.warning("GC: stopped after %d Interface(s) (%s)", removed, e,
                    exc_info=not isinstance(e, api.Error))


def run(raw: str, env) -> tuple[int, dict | None]:
    """(exit status, JSON to print) for one invocation."""
    command = env.get("CNI_COMMAND")
    version = ERROR_VERSION
    verbs = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status,
             "GC": cmd_gc}
    try:
        if not command:
            raise CniError(E_ENV, "CNI_COMMAND is missing")
        if command == "VERSION":
            return 0, {"cniVersion": CURRENT, "supportedVersions": SUPPORTED}
        if command not in verbs:
            raise CniError(E_ENV, f"unknown CNI_COMMAND {command!r}",
                           f"expected {', '.join(verbs)} or VERSION")
        cfg = decode_config(raw)
        version = cfg["cniVersion"]         # errors from here on answer in it
        check_config(cfg)
        _setup_logging(cfg.get("logFile") or env.get("OVSFOOT_CNI_LOG"))
        args = parse_cni_args(env.get("CNI_ARGS", ""))
        if command in SINCE and SUPPORTED.index(version) < SUPPORTED.index(SINCE[command]):
            raise CniError(E_INCOMPATIBLE, f"{command} is not defined for cniVersion {version}",
                           f"{command} needs cniVersion {SINCE[command]} or later")
        out = verbs[command](cfg, env, args)
        return 0, out if command == "ADD" else None
    except CniError as e:
        log.error("%s: %s%s", command or "?", e.msg, f" ({e.details})" if e.details else "")
        return 1, {"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details}
    except Exception as e:          # a bug: still an error object, the traceback in the log
        return 1, internal_error(command, version, e)


def internal_error(command, version: str, e: BaseException) -> dict:
    log.error("%s: internal error: %s\n%s", command or "?", printable(repr(e), 300),
              traceback.format_exc(limit=20)[-4000:])
    return {"cniVersion": version, "code": E_INTERNAL, "msg": "ovsfoot-cni internal error",
            "details": printable(f"{type(e).__name__}: {e}", 300)}


def main() -> int:
    try:
        _setup_logging(os.environ.get("OVSFOOT_CNI_LOG"))
        try:
            raw = sys.stdin.read()
        except (OSError, UnicodeDecodeError) as e:
            raw = f"\0{e}"
        status, out = run(raw, os.environ)
        text = None if out is None else json.dumps(out)
    except BaseException as e:      # never a bare traceback: the runtime reads stdout
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        status, out = 1, internal_error(os.environ.get("CNI_COMMAND"), ERROR_VERSION, e)
        text = json.dumps(out)
    if text is not None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
