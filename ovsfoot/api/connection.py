"""The library's connection to the local Open_vSwitch database (python-ovs IDL): one
`timeout` for connecting and the first copy of the database, and one for each
transaction, retried on TRY_AGAIN within it."""

from __future__ import annotations

import time
from typing import Self

import ovs.db.idl
import ovs.poller

from ovsfoot.api.errors import DatabaseUnavailable, Error, Timeout
from ovsfoot.ovsdb import default_remote, open_idl

TABLES = {
    "Open_vSwitch": ["external_ids"],
    "Bridge": ["name", "external_ids"],
    "Interface": ["name", "external_ids", "mac_in_use"],
}


class Connection:
    """The IDL on `remote` (default unix:$OVS_RUNDIR/db.sock) with its first copy of
    the database; what Node reads and writes through. A context manager."""

    def __init__(self, remote: str | None = None, timeout: float = 2.0):
        self.remote = remote or default_remote()
        self.timeout = timeout
        start = time.monotonic()        # one `timeout` for connecting and the first copy
        try:
            self.idl = open_idl(self.remote, "Open_vSwitch", TABLES, retry=0.1,
                                timeout=timeout)
        except OSError as e:
            raise DatabaseUnavailable(f"cannot reach the Open_vSwitch database at "
                                      f"{self.remote}: {e.strerror or e}") from None
        self._sync(max(0.0, timeout - (time.monotonic() - start)))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.idl.close()

    def _block(self, deadline: float, txn=None) -> bool:
        """Waits for the server (and `txn`) until `deadline`; False once it has passed."""
        if time.monotonic() >= deadline:
            return False
        poller = ovs.poller.Poller()
        self.idl.wait(poller)
        if txn is not None:
            txn.wait(poller)
        poller.timer_wait(max(1, int((deadline - time.monotonic()) * 1000)))
        poller.block()
        return True

    def _sync(self, timeout: float) -> None:
        """Waits for the first copy of the database."""
        deadline = time.monotonic() + timeout
        self.idl.run()
        while not self.idl.has_ever_connected():
            if not self._block(deadline):
                self.close()
                raise DatabaseUnavailable(f"{self.remote} did not send the Open_vSwitch "
                                          f"database within {timeout:g} s")
            self.idl.run()

    def refresh(self) -> None:
        """Takes in what the server sent since (reads do it on their own)."""
        self.idl.run()

    def _rows(self, table: str):
        return list(self.idl.tables[table].rows.values())

    def transact(self, what: str, edit) -> None:
        """Runs `edit(txn)` in a transaction, retrying on TRY_AGAIN, within the timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            self.idl.run()
            txn = ovs.db.idl.Transaction(self.idl)
            txn.add_comment(f"ovsfoot api: {what}")
            try:
                edit(txn)
            except BaseException:
                txn.abort()
                raise
            while (status := txn.commit()) == txn.INCOMPLETE:
                if not self._block(deadline, txn):
                    txn.abort()
                    raise Timeout(f"{what}: no answer from {self.remote} within "
                                  f"{self.timeout:g} s")
                self.idl.run()
            if status in (txn.SUCCESS, txn.UNCHANGED):
                return
            if status == txn.TRY_AGAIN and time.monotonic() < deadline:
                self._block(min(deadline, time.monotonic() + 0.1))
                continue
            raise Error(f"{what}: transaction {status}: {txn.get_error()}")
