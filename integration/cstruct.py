"""A struct of an eBPF C program as a ctypes type, read from the C text: what bcc's
`table.event()` must derive from the same struct (tests/unit/test_bpf_event.py, the
tracer matrix's "loads" check).

Reads the plain declarations bcc's `table.event()` decodes: u8, u16, u32 and u64,
each alone or as a one-dimensional array; anything else is a ValueError (bcc would
exit the process at the first event).
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

CTYPES = {"u8": ctypes.c_uint8, "u16": ctypes.c_uint16, "u32": ctypes.c_uint32,
          "u64": ctypes.c_uint64}
DECLARATION = re.compile(r"(\w+) (\w+)(?:\[(\d+)\])?;")


def c_struct(path: Path, name: str) -> type[ctypes.Structure]:
    """`struct name { ... };` of the C file `path`, with C's (natural) alignment."""
    m = re.search(rf"^struct {name} \{{\n(.*?)^\}};", path.read_text(), re.M | re.S)
    if not m:
        raise ValueError(f"no struct {name} in {path}")
    fields = []
    for line in re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S).splitlines():
        if not line.strip():
            continue
        d = DECLARATION.fullmatch(" ".join(line.split()))
        if not d or d.group(1) not in CTYPES:
            raise ValueError(f"struct {name} in {path}: {line.strip()!r} is not a u8, u16, "
                             "u32 or u64, nor an array of one")
        ctype = CTYPES[d.group(1)]
        fields.append((d.group(2), ctype * int(d.group(3)) if d.group(3) else ctype))
    return type(name, (ctypes.Structure,), {"_fields_": fields})


def layout(struct: type[ctypes.Structure]) -> list[list]:
    """[name, offset, size] of each field, in order (JSON-friendly, to compare)."""
    return [[name, getattr(struct, name).offset, getattr(struct, name).size]
            for name, _ in struct._fields_]
