"""Traffic for the VM benchmarks, run inside the pods' network namespaces (stdlib only).

    vmflows.py sink PORT CHURN_PORT            a TCP sink, and a port that accepts and closes
    vmflows.py send DST PORT RATE_BPS SECONDS      paced TCP flows on command from stdin,
                                                   each SECONDS at most; JSON lines on stdout
    vmflows.py churn DST PORT SECONDS MAX OUT.json       connect / reset, as fast as it goes

Every loop is bounded in time and count.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import threading
import time


def sink(port: int, churn_port: int) -> None:
    def drain(conn):
        with conn:
            conn.settimeout(30)
            try:
                while conn.recv(1 << 16):
                    pass
            except OSError:
                pass

    def serve(p, handler):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", p))
        s.listen(4096)
        while True:
            try:
                conn, _ = s.accept()
            except OSError:
                continue
            handler(conn)

    threading.Thread(target=serve, daemon=True,
                     args=(port, lambda c: threading.Thread(target=drain, args=(c,),
                                                            daemon=True).start())).start()
    serve(churn_port, lambda c: c.close())


def send(dst: str, port: int, rate: float, seconds: float, stop_fd: int) -> dict:
    """Sends at `rate` bytes/s, in 5 ms steps, until a byte (or EOF) is readable on
    `stop_fd` or for `seconds` at most; says when it connected."""
    s = socket.socket()
    s.settimeout(10)
    t_connect = time.time()
    s.connect((dst, port))
    t_connected = time.time()
    sport = s.getsockname()[1]
    buf = b"x" * 65536
    sent, end = 0, t_connected + seconds
    while (now := time.time()) < end:
        due = int(rate * (now - t_connected)) - sent
        while due > 0:
            n = s.send(buf[:min(due, len(buf))])
            sent += n
            due -= n
        if select.select([stop_fd], [], [], 0.005)[0]:
            os.read(stop_fd, 1)
            break
    s.close()
    return {"t_connect": t_connect, "t_connected": t_connected, "t_end": time.time(),
            "sport": sport, "bytes": sent}


def sender(dst: str, port: int, rate: float, seconds: float) -> None:
    """Flows on command, in one process (no interpreter start-up between the bench's
    request and the first packet: 1.5-2 s under emulation): a "g" on stdin starts one,
    an "s" ends it; a JSON line each on stdout."""
    while os.read(0, 1) == b"g":
        print(json.dumps(send(dst, port, rate, seconds, 0)), flush=True)


def churn(dst: str, port: int, seconds: float, limit: int, out: str) -> None:
    """Short connections: connect, then close with a reset (no TIME_WAIT on the client)."""
    linger = struct.pack("ii", 1, 0)
    ok = errors = 0
    t0 = time.time()
    end = t0 + seconds
    while time.time() < end and ok + errors < limit:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.settimeout(2)
        try:
            s.connect((dst, port))
            ok += 1
        except OSError:
            errors += 1
        finally:
            s.close()
    with open(out, "w") as f:
        json.dump({"connections": ok, "errors": errors, "seconds": time.time() - t0}, f)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "sink":
        sink(int(args[0]), int(args[1]))
    elif cmd == "send":
        sender(args[0], int(args[1]), float(args[2]), float(args[3]))
    elif cmd == "churn":
        churn(args[0], int(args[1]), float(args[2]), int(args[3]), args[4])
    else:
        sys.exit(f"unknown command {cmd}")
