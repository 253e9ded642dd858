"""Workload traffic for the tests and the lab, run in a pod's network namespace.

    traffic.py serve ADDR PORT                       a sink: reads each connection to
                                                     its end, answers "ok", closes
    traffic.py shuffle ADDR PORT FLOWS BYTES SECONDS FLOWS connections per second of
                                                     BYTES each: heavy without an elephant
    traffic.py rpc ADDR PORT RATE SECONDS            RATE short request/response
                                                     connections per second: sensitive

A standalone script (python3 path/to/traffic.py ...): it imports nothing from
ovsfoot, so it runs as it is in a namespace or in the lab VM. The clients print
one line at the end: connections made and bytes sent.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

CHUNK = 65536
REQUEST = b"x" * 64


def _handle(conn: socket.socket) -> None:
    with conn:
        while conn.recv(CHUNK):
            pass
        conn.sendall(b"ok")


def serve(addr: str, port: int) -> None:
    s = socket.create_server((addr, port), backlog=1024)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=_handle, args=(conn,), daemon=True).start()


def _send(addr: str, port: int, payload: bytes, count: list) -> None:
    try:
        with socket.create_connection((addr, port), timeout=10) as c:
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
            c.recv(16)
        count.append(len(payload))
    except OSError:
        pass                # counted as not made


def shuffle(addr: str, port: int, flows: int, size: int, seconds: float) -> None:
    payload, sent, threads = b"\0" * size, [], []
    end = time.monotonic() + seconds
    while (now := time.monotonic()) < end:
        batch = [threading.Thread(target=_send, args=(addr, port, payload, sent))
                 for _ in range(flows)]
        for t in batch:
            t.start()
        threads += batch
        time.sleep(max(0.0, now + 1 - time.monotonic()))
    for t in threads:
        t.join()
    print(f"connections {len(sent)} bytes {sum(sent)}", flush=True)


def rpc(addr: str, port: int, rate: float, seconds: float) -> None:
    sent = []
    start = time.monotonic()
    n = 0
    while time.monotonic() < start + seconds:
        _send(addr, port, REQUEST, sent)
        n += 1
        time.sleep(max(0.0, start + n / rate - time.monotonic()))
    print(f"connections {len(sent)} bytes {sum(sent)}", flush=True)


def main(argv: list[str]) -> None:
    cmd, addr, port, *rest = argv
    if cmd == "serve":
        serve(addr, int(port))
    elif cmd == "shuffle":
        shuffle(addr, int(port), int(rest[0]), int(rest[1]), float(rest[2]))
    elif cmd == "rpc":
        rpc(addr, int(port), float(rest[0]), float(rest[1]))
    else:
        raise SystemExit(f"unknown command {cmd!r}: serve, shuffle or rpc")


if __name__ == "__main__":
    main(sys.argv[1:])
