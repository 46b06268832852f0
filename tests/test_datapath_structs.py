"""The ctypes mirrors in xpro_mesh/datapath/structs.py match bpf/xpro.h.

A probe program compiled by bcc against the header writes every sizeof,
offsetof and constant into the frame it is run on (BPF_PROG_TEST_RUN); the
test compares them with the mirrors, field by field.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import struct
from pathlib import Path

import pytest

from xpro_mesh.datapath import bpf_maps, libbpf, structs
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


def test_bulk_decoders_cover_whole_structs() -> None:
    assert structs.PAIR_RECORD.size == ct.sizeof(structs.XproPair)
    assert structs.DEST_RECORD.size == ct.sizeof(structs.XproDest)
    assert bpf_maps._OP.size == ct.sizeof(structs.XproOp)


def test_bulk_pair_decoder_reads_the_fields_ctypes_writes() -> None:
    rec = structs.XproPair(ts1=1, ts2=2, c=-3, dc=4, warn_ts=5, mark=1, flags=3)
    assert structs.PAIR_RECORD.unpack(bytes(rec)) == (1, 2, -3, 4, 5, 1, 3)
    dest = structs.XproDest(ts1=7, ts2=8, c=9, n=10, lock=0, flags=1)
    assert structs.DEST_RECORD.unpack(bytes(dest)) == (7, 8, 9, 10, 0, 1)


def test_op_packer_writes_the_fields_ctypes_reads() -> None:
    raw = bpf_maps._op_bytes(
        structs.XPRO_OP_PAIR,
        structs.XPRO_OP_EXPECT,
        to_addr("10.0.0.1"),
        to_addr("::1"),
        11,
        12,
        -13,
        14,
        15,
        16,
    )
    op = structs.XproOp.from_buffer_copy(raw)
    assert (op.kind, op.flags, op.status) == (structs.XPRO_OP_PAIR, structs.XPRO_OP_EXPECT, 0)
    assert bytes(op.key.src.b) == to_addr("10.0.0.1")
    assert bytes(op.key.dst.b) == to_addr("::1")
    assert (op.expect_ts1, op.acked_dc, op.c_delta, op.n_delta, op.ts1, op.ts2) == (
        11,
        12,
        -13,
        14,
        15,
        16,
    )


def test_op_packer_refuses_values_the_kernel_cannot_hold() -> None:
    with pytest.raises(ValueError, match="64-bit"):
        bpf_maps._op_bytes(structs.XPRO_OP_PAIR, 0, bytes(16), bytes(16), 0, 0, 2**63, 0, 0, 0)


def test_ipv4_is_keyed_v4_mapped_and_ipv6_as_is() -> None:
    assert to_addr("192.0.2.7") == bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 7])
    assert to_addr("2001:db8::1") == ipaddress.IPv6Address("2001:db8::1").packed
    assert to_addr(bytes([10, 0, 0, 1])) == to_addr("10.0.0.1")
    assert from_addr(to_addr("192.0.2.7")) == ipaddress.IPv4Address("192.0.2.7")
    assert from_addr(to_addr("2001:db8::1")) == ipaddress.IPv6Address("2001:db8::1")
    with pytest.raises(ValueError):
        to_addr(b"\x01\x02")


def test_the_numpy_view_of_a_pair_matches_the_c_struct() -> None:
    """BpfMaps scans the pair map with numpy (read_active_pairs): its dtype
    must lay the fields where struct xpro_pair has them."""
    import ctypes as ct

    from xpro_mesh.datapath.bpf_maps import _PAIR_DTYPE

    assert _PAIR_DTYPE.itemsize == ct.sizeof(structs.XproPair)
    layout = _PAIR_DTYPE.fields
    assert layout is not None
    for name in ("ts1", "ts2", "c", "dc", "warn_ts", "mark", "flags"):
        assert layout[name][1] == getattr(structs.XproPair, name).offset, name
