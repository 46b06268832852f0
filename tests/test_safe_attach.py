"""Switching the filter on safely: another XDP program on the interface is
not replaced without --replace; --check-config judges a configuration and
starts nothing; loose key files and an open wildcard API are warned about."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from datapath_support import run_cli
from pyroute2 import NetNS
from pyroute2 import netns as pyroute2_netns

from xpro_mesh.agent import preflight
from xpro_mesh.agent.config import load_config
from xpro_mesh.cli import main as cli_main
from xpro_mesh.datapath import libbpf, loader

BPF_RUN = Path("/run/xpro/bpf")
FOREIGN = b"int other(struct xdp_md *ctx) { return XDP_PASS; }"


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    pyroute2_netns.pushns(ns)
    try:
        yield
    finally:
        pyroute2_netns.popns()


@pytest.mark.kernel
@pytest.mark.netns
def test_attach_refuses_another_xdp_program_without_replace(
    netns: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    import bcc

    ns = netns("xsa-host")
    with NetNS(ns) as ip:
        ip.link("add", ifname="sa0", kind="veth", peer={"ifname": "sa1"})
        for name in ("sa0", "sa1"):
            ip.link("set", index=ip.link_lookup(ifname=name)[0], state="up")
    pin_root = BPF_RUN / ns
    other = bcc.BPF(text=FOREIGN)
    try:
        with inside(ns):
            ifindex = socket.if_nametoindex("sa0")
            fn = other.load_func(b"other", bcc.BPF.XDP)
            libbpf.xdp_attach(ifindex, fn.fd, libbpf.XDP_FLAGS_SKB_MODE)
            foreign_id = libbpf.xdp_query(ifindex)[1]
            argv = ["xdp", "attach", "--iface", "sa0", "--pin-root", str(pin_root)]
            status, err = run_cli([*argv, "--mode", "generic"])
            assert status == 2
            assert f"program id {foreign_id}" in err and "--replace" in err
            assert libbpf.xdp_query(ifindex)[1] == foreign_id  # untouched
            assert not (pin_root / "sa0").exists()
            # --replace replaces it; attaching our own filter again needs nothing.
            assert run_cli([*argv, "--mode", "generic", "--replace"]) == (0, "")
            ours = libbpf.xdp_query(ifindex)[1]
            assert ours not in (0, foreign_id)
            assert loader.foreign_program("sa0", pin_root=pin_root) == 0
            assert run_cli([*argv, "--mode", "generic"]) == (0, "")
            capsys.readouterr()
    finally:
        with inside(ns), contextlib.suppress(Exception):
            loader.detach("sa0", pin_root=pin_root)
        other.cleanup()
    assert not (pin_root / "sa0").exists()


def _config(tmp_path: Path, api: str, mode: int) -> tuple[object, Path]:
    key = tmp_path / "cluster.key"
    key.write_text("ab" * 32 + "\n")
    os.chmod(key, mode)
    return load_config(None, {"backend": "memory", "key_file": str(key), "api": api}), key


def test_a_key_file_others_can_read_is_warned_about(tmp_path: Path) -> None:
    config, key = _config(tmp_path, "127.0.0.1:7947", 0o644)
    assert preflight.warnings(config, None) == [  # type: ignore[arg-type]
        f"key_file: {key} is readable by others (mode 0644): chmod 600 {key}"
    ]
    config, _ = _config(tmp_path, "127.0.0.1:7947", 0o600)
    assert preflight.warnings(config, None) == []  # type: ignore[arg-type]


@pytest.mark.parametrize("api", ["0.0.0.0:7947", "[::]:7947"])
def test_a_wildcard_api_without_a_token_is_warned_about(tmp_path: Path, api: str) -> None:
    config, _ = _config(tmp_path, api, 0o600)
    (warning,) = preflight.warnings(config, None)  # type: ignore[arg-type]
    assert "listens on every address with no api_token_file" in warning
    assert preflight.warnings(config, "s3cret") == []  # type: ignore[arg-type]


def test_check_config_judges_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "cluster.key"
    key.write_text("ab" * 32 + "\n")
    os.chmod(key, 0o600)
    argv = ["agent", "--check-config", "--key-file", str(key), "--api", "127.0.0.1:1"]
    assert cli_main([*argv, "--backend", "memory"]) == 0
    out = capsys.readouterr().out
    assert "1 cluster key(s)" in out and out.rstrip().endswith("config OK")
    key.write_text("not-a-key\n")
    assert cli_main([*argv, "--backend", "xdp", "--iface", "no-such-if0"]) == 1
    out = capsys.readouterr().out
    assert "problem: key_file:" in out and "problem: iface: no interface named no-such-if0" in out
