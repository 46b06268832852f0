"""The ctypes mirrors in xpro_mesh/datapath/structs.py match bpf/xpro.h.

A probe program compiled by bcc against the header writes every sizeof,
offsetof and constant into the frame it is run on (BPF_PROG_TEST_RUN); the
test compares them with the mirrors, field by field.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xpro_mesh.datapath import libbpf, structs
from xpro_mesh.datapath.structs import from_addr, to_addr


def _probe_items() -> list[tuple[str, str, int]]:
    """(description, C expression, Python value) for every size, offset and constant."""
    items: list[tuple[str, str, int]] = []
    for cname, mirror in structs.MIRRORS.items():
        items.append((f"sizeof {cname}", f"sizeof(struct {cname})", ct.sizeof(mirror)))
        for fname, *_ in mirror._fields_:
            items.append(
                (
                    f"offsetof {cname}.{fname}",
                    f"__builtin_offsetof(struct {cname}, {fname})",
                    getattr(mirror, fname).offset,
                )
            )
    for name, value in structs.CONSTANTS.items():
        items.append((name, name, value))
    return items


@pytest.mark.kernel
def test_ctypes_mirrors_match_the_c_header(root: None, tmp_path: Path) -> None:
    from xpro_mesh.datapath import loader

    items = _probe_items()
    stores = "\n".join(f"\tout[{i}] = {expr};" for i, (_d, expr, _v) in enumerate(items))
    source = tmp_path / "probe.c"
    source.write_text(
        '#include <uapi/linux/bpf.h>\n#include "xpro.h"\n'
        "int probe(struct xdp_md *ctx)\n{\n"
        "\tvoid *data = (void *)(long)ctx->data;\n"
        "\tvoid *end = (void *)(long)ctx->data_end;\n"
        "\t__u32 *out = data;\n"
        f"\tif ((void *)(out + {len(items)}) > end)\n\t\treturn XDP_ABORTED;\n"
        f"{stores}\n\treturn XDP_PASS;\n}}\n"
    )
    bpf, fds = loader.compile_programs(
        source, [f"-I{loader.BPF_DIR}"], ["probe"], log_tag="xpro-struct-probe"
    )
    try:
        run = libbpf.prog_test_run(fds["probe"], bytes(4 * len(items) + 64))
    finally:
        bpf.cleanup()
    assert run.retval == 2  # XDP_PASS
    got = struct.unpack_from(f"<{len(items)}I", run.data_out)
    mismatches = [
        f"{desc}: C {c_value}, Python {py_value}"
        for (desc, _expr, py_value), c_value in zip(items, got, strict=True)
        if c_value != py_value
    ]
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize("cname", list(structs.DTYPE_MIRRORS))
def test_numpy_dtypes_lay_every_field_where_the_ctypes_mirror_does(cname: str) -> None:
    """The agent reads the mmapped slot arrays through these dtypes; the
    ctypes mirrors are checked against the header above, so field by field
    equality here makes the dtypes true to the C."""
    dtype, mirror, renames = structs.DTYPE_MIRRORS[cname]
    assert dtype.itemsize == ct.sizeof(mirror)
    assert dtype.isalignedstruct
    flat: dict[str, tuple[int, int]] = {}
    for fname, ftype, *_ in mirror._fields_:
        offset = getattr(mirror, fname).offset
        sub = getattr(ftype, "_fields_", None)
        if sub is not None and not issubclass(ftype, ct.Union):
            for sname, stype, *_ in sub:
                flat[f"{fname}.{sname}"] = (offset + getattr(ftype, sname).offset, ct.sizeof(stype))
        else:
            flat[fname] = (offset, ct.sizeof(ftype))
    names = dtype.names or ()
    fields: Mapping[str, Any] = dtype.fields or {}
    assert len(names) == len(flat), (names, list(flat))
    for name in names:
        field_dtype, offset = fields[name][:2]
        assert (offset, field_dtype.itemsize) == flat[renames.get(name, name)], name


def test_slot_dtypes_round_trip_what_ctypes_writes() -> None:
    slot = structs.XproSlot(gen=2, ts1=3, ts2=4, c=-5, dslot=6, dgen=7, v_gen=2, v_adj=-8)
    slot.key = structs.pair_key_struct(to_addr("10.0.0.1"), to_addr("::1"))
    row = np.frombuffer(bytes(slot), structs.PAIR_SLOT_DTYPE)[0]
    assert (row["gen"], row["c"], row["dslot"], row["dgen"], row["v_adj"]) == (2, -5, 6, 7, -8)
    assert bytes(row["src"]) == to_addr("10.0.0.1") and bytes(row["dst"]) == to_addr("::1")


def test_ipv4_is_keyed_v4_mapped_and_ipv6_as_is() -> None:
    assert to_addr("192.0.2.7") == bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 7])
    assert to_addr("2001:db8::1") == ipaddress.IPv6Address("2001:db8::1").packed
    assert to_addr(bytes([10, 0, 0, 1])) == to_addr("10.0.0.1")
    assert from_addr(to_addr("192.0.2.7")) == ipaddress.IPv4Address("192.0.2.7")
    assert from_addr(to_addr("2001:db8::1")) == ipaddress.IPv6Address("2001:db8::1")
    with pytest.raises(ValueError):
        to_addr(b"\x01\x02")


def test_view_writes_address_the_agent_half_by_word() -> None:
    """The view writers store 64-bit words from v_gen on: the agent half
    must be v_gen then the view's fields, in that order, to the struct's end."""
    from xpro_mesh.datapath import slots

    pair = [f for f, *_ in structs.XproSlot._fields_]
    assert pair[pair.index("v_gen") :] == ["v_gen", "v_adj", "v_ts1", "v_ts2"]
    assert structs.XproSlot.v_gen.offset == slots._PAIR_V_GEN * 8
    dest = [f for f, *_ in structs.XproDslot._fields_]
    agent_half = ["v_gen", "v_adj", "v_nadj", "v_ts1", "v_ts2", "v_c"]
    assert dest[dest.index("v_gen") :] == agent_half
    assert structs.XproDslot.v_gen.offset == slots._DEST_V_GEN * 8
