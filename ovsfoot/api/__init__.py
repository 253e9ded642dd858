"""A small library for CNI plugins, operators and tools: `from ovsfoot import api`.

It talks to the local Open_vSwitch database (python-ovs IDL, short timeouts) and
works whether or not the ovsfoot agent runs; it never talks to the agent itself.

    from ovsfoot import api

    with api.Node() as node:                       # unix:$OVS_RUNDIR/db.sock
        iface = node.find_interface(iface_id="shop_web-7d9f8b6c5d-x2x4z")
        node.register_port(iface, "shop/web")      # before the pod sends a byte
        print(node.port_footprint(iface))          # what the agent published
        print(node.workload_footprint("shop/web"), node.node_footprint())

Writing: only `ovsfoot-workload` (the workload identity, an input of the agent) and,
through the CNI plugin, its marker `ovsfoot-cni`; always with setkey/delkey, so
other writers' keys are never touched, and never a `ct-zone-*` key.

Reading: the keys the agent publishes (contract.py, README "OVSDB keys"): on
each Interface `ovsfoot-footprint`, `ovsfoot-elephants`, `ovsfoot-workload-class`,
`ovsfoot-ts`; on the integration bridge's Bridge row (`ovn-bridge`, default
br-int) `ovsfoot-footprint`, `ovsfoot-elephants`, `ovsfoot-heavy-ports`, `ovsfoot-ts`.

Errors are `api.Error` subclasses: `DatabaseUnavailable`, `UnknownInterface`,
`AmbiguousInterface`, `MalformedValue`, `Timeout`.
"""

from ovsfoot.api.errors import (AmbiguousInterface, DatabaseUnavailable, Error, MalformedValue,
                                Timeout, UnknownInterface)
from ovsfoot.api.keys import CNI_MARKER_KEY, WORKLOAD_KEY, validate_workload
from ovsfoot.api.node import Node
from ovsfoot.api.records import InterfaceInfo, NodeFootprint, PortFootprint, WorkloadFootprint

__all__ = ["Node", "PortFootprint", "WorkloadFootprint", "NodeFootprint", "InterfaceInfo",
           "Error", "DatabaseUnavailable", "UnknownInterface", "AmbiguousInterface",
           "MalformedValue", "Timeout", "WORKLOAD_KEY", "CNI_MARKER_KEY", "validate_workload"]
