"""``xpro-mesh xdp``: every operator error is one clear line (status 2), and
a verifier rejection leaves its log in a file whose path is printed."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from datapath_support import run_cli

from xpro_mesh.datapath import libbpf, loader

BPF_RUN = Path("/run/xpro/bpf")


@pytest.fixture
def pin_root() -> Iterator[Path]:
    root = BPF_RUN / f"cli-test-{uuid.uuid4().hex[:8]}"
    yield root
    assert not root.exists(), f"{root} left behind"


def _one_line(err: str) -> str:
    assert err.startswith("xpro-mesh: error: ")
    assert "\n" not in err and "Traceback" not in err
    return err


def test_not_root_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for argv in (
        ["xdp", "attach", "--iface", "lo"],
        ["xdp", "stats", "--iface", "lo"],
        ["xdp", "set", "--iface", "lo", "t_f1=1"],
        ["xdp", "detach", "--iface", "lo"],
    ):
        status, err = run_cli(argv)
        assert status == 2
        assert "needs root" in _one_line(err)


@pytest.mark.kernel
def test_unknown_interface_is_one_line(root: None, pin_root: Path) -> None:
    for action in ("attach", "detach"):
        status, err = run_cli(["xdp", action, "--iface", "nosuch0", "--pin-root", str(pin_root)])
        assert status == 2
        assert "no such interface: 'nosuch0'" in _one_line(err)


@pytest.mark.kernel
def test_missing_bcc_is_one_line(
    root: None, monkeypatch: pytest.MonkeyPatch, pin_root: Path
) -> None:
    monkeypatch.setitem(sys.modules, "bcc", None)  # import bcc -> ImportError
    status, err = run_cli(["xdp", "attach", "--iface", "lo", "--pin-root", str(pin_root)])
    assert status == 2
    assert "bcc is not importable" in _one_line(err)
    assert "python3-bpfcc" in err


@pytest.mark.kernel
def test_verifier_rejection_is_one_line_with_the_log_saved(
    root: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pin_root: Path
) -> None:
    bad = tmp_path / "bad.c"
    bad.write_text(
        "#include <uapi/linux/bpf.h>\n"
        "int xpro_filter(struct xdp_md *ctx)\n"
        "{ return *(unsigned char *)(long)ctx->data; } /* no bounds check */\n"
    )
    monkeypatch.setattr(loader, "SOURCE", bad)
    monkeypatch.setattr(loader, "_log_dir", lambda: tmp_path)
    status, err = run_cli(["xdp", "attach", "--iface", "lo", "--pin-root", str(pin_root)])
    assert status == 2
    assert "verifier rejected xpro_filter; verifier log saved to" in _one_line(err)
    log = Path(err.rsplit(" ", 1)[1])
    assert log.parent == tmp_path
    assert "invalid access to packet" in log.read_text()
    assert libbpf.xdp_query(1) == (0, 0)  # lo untouched


@pytest.mark.kernel
def test_compile_error_is_one_line_with_the_log_saved(
    root: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pin_root: Path
) -> None:
    bad = tmp_path / "bad.c"
    bad.write_text("int xpro_filter(struct xdp_md *ctx) { return nonsense; }\n")
    monkeypatch.setattr(loader, "SOURCE", bad)
    monkeypatch.setattr(loader, "_log_dir", lambda: tmp_path)
    status, err = run_cli(["xdp", "attach", "--iface", "lo", "--pin-root", str(pin_root)])
    assert status == 2
    log = Path(_one_line(err).rsplit(" ", 1)[1])
    assert "nonsense" in log.read_text()


@pytest.mark.kernel
def test_commands_on_an_interface_without_the_filter_say_so(root: None, pin_root: Path) -> None:
    for argv in (["xdp", "stats", "--iface", "lo"], ["xdp", "set", "--iface", "lo", "t_f1=5"]):
        status, err = run_cli([*argv, "--pin-root", str(pin_root)])
        assert status == 2
        assert "no live XDP data path pinned at" in _one_line(err)
        assert "xdp attach" in err


def test_bad_config_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "attach", lambda *a, **k: pytest.fail("must not attach"))
    missing = tmp_path / "nope.toml"
    status, err = run_cli(["xdp", "attach", "--iface", "lo", "--config", str(missing)])
    assert status == 2
    assert "nope.toml: no such file" in _one_line(err)
    bad = tmp_path / "bad.toml"
    bad.write_text("policy = 'strictest'\n")
    status, err = run_cli(["xdp", "attach", "--iface", "lo", "--config", str(bad)])
    assert "policy: 'strictest' is not one of fair-share, paper" in _one_line(err)
