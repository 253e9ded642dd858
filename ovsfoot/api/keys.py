"""The keys the library writes (the workload identity and the CNI plugin's marker),
and the contract's checks and parsing as the library's MalformedValue."""

from __future__ import annotations

from ovsfoot import contract
from ovsfoot.api.errors import MalformedValue

WORKLOAD_KEY = contract.WORKLOAD       # input: the workload identity of a port
CNI_MARKER_KEY = contract.CNI_MARKER   # input: the container whose CNI ADD set the identity
WRITABLE = frozenset({WORKLOAD_KEY, CNI_MARKER_KEY})


def validate_workload(workload: str) -> str:
    """The workload identity stripped; MalformedValue if empty, too long or with spaces."""
    try:
        return contract.validate_workload(workload)
    except contract.ContractError as e:
        raise MalformedValue(str(e)) from None


def parse(keys, ids: dict[str, str], where: str):
    """`keys.parse(ids, where)` (contract.PortKeys, or NodeKeys as api.NodeFootprint);
    MalformedValue if the published keys are off the contract."""
    try:
        return keys.parse(ids, where)
    except contract.ContractError as e:
        raise MalformedValue(str(e)) from None
