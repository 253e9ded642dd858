"""Network namespaces by `ip netns` name: inode numbers and sysctls inside them."""

from __future__ import annotations

import os
from contextlib import contextmanager

from pyroute2 import netns as _netns


def inode(name: str | None) -> int:
    """Inode of namespace `name` (None: our own), the id conntrack keys carry."""
    path = f"/run/netns/{name}" if name else "/proc/self/ns/net"
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        raise FileNotFoundError(f"network namespace {name!r} not found "
                                f"(see `ip netns list`)") from None


@contextmanager
def entered(name: str | None):
    """Run the body inside namespace `name` (None: stay where we are)."""
    if not name:
        yield
        return
    _netns.pushns(name)
    try:
        yield
    finally:
        _netns.popns()


def sysctl(name: str | None, key: str, value: str | None = None) -> str | None:
    """Read (and with `value`, first write) sysctl `key` in namespace `name`.

    Returns the value read, or None when the sysctl does not exist.
    """
    path = "/proc/sys/" + key.replace(".", "/")
    with entered(name):
        if not os.path.exists(path):
            return None
        if value is not None:
            try:
                with open(path, "w") as f:
                    f.write(value)
            except OSError:
                pass
        with open(path) as f:
            return f.read().strip()
