"""An OVSDB monitor client that logs when it sees ovsfoot's keys change.

    python -m integration.monitor REMOTE OUTPUT

Writes one JSON line per change of the `ovsfoot-*` keys of an Interface or of a
Bridge (the integration bridge carries the node summary): {"t": seconds since
the epoch when the update arrived (when the client woke to read it, before
python-ovs parsed it: several ms under emulation), "table": "Interface" or
"Bridge", "name": the row's name, "ids": {...}}. Used by the lab and the
benchmarks to measure when a publication becomes visible to a consumer.
"""

from __future__ import annotations

import json
import signal
import sys
import time

import ovs.poller

from ovsfoot.ovsdb import open_idl

TABLES = {"Bridge": ["name", "external_ids"], "Interface": ["name", "external_ids"]}


def keys(row) -> dict[str, str]:
    return {k: v for k, v in row.external_ids.items() if k.startswith("ovsfoot-")}


def main() -> int:
    remote, output = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    idl = open_idl(remote, "Open_vSwitch", TABLES, timeout=30)
    last: dict[tuple[str, str], dict] = {}
    seqno = None
    with open(output, "w", buffering=1) as out:
        while True:
            arrived = time.time()       # woken by the server's message: before parsing it
            idl.run()
            if idl.change_seqno != seqno:
                seqno = idl.change_seqno
                for table in TABLES:
                    for row in idl.tables[table].rows.values():
                        name = row.name
                        ids = keys(row)
                        if last.get((table, name)) != ids:
                            last[(table, name)] = ids
                            out.write(json.dumps({"t": arrived, "table": table, "name": name,
                                                  "ids": ids}) + "\n")
            poller = ovs.poller.Poller()
            idl.wait(poller)
            poller.block()


if __name__ == "__main__":
    sys.exit(main())
