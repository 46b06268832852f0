"""Build, load, pin, attach and detach the XDP program. The only module that
imports bcc (lazily: importing this module does not need it).

bcc compiles ``bpf/xpro.c`` and loads the filter. With a pin directory,
bcc creates each map pinned there, or reuses the live one already pinned,
so a restarted loader keeps the state. Maps made fresh get their free
rings filled with every slot (a ring whose ``size`` is still 0 is fresh).
The program is pinned beside the maps (``prog_filter``). Attach, detach and
query go through libbpf (netlink).

Pin layout: ``<pin_root>/<iface>/{pair_index,pair_slots,dest_index,
dest_slots,pair_free,dest_free,ring_ctl,spares,config,clock,stats,events,
prog_filter}``; default pin root ``/sys/fs/bpf/xpro``.
``ip netns exec`` remounts /sys, so the lab uses a bpffs mounted outside
it (``/run/xpro/bpf/<ns>``).
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xpro_mesh.datapath import clock, libbpf
from xpro_mesh.datapath.bpf_maps import MAP_LAYOUT, PROG_PINS, BpfMaps
from xpro_mesh.datapath.config import ClockSource, MapSizes, XdpConfig
from xpro_mesh.datapath.errors import (
    BccMissingError,
    CompileError,
    DatapathError,
    ForeignProgramError,
    NoSuchInterfaceError,
    NotRootError,
    VerifierError,
)
from xpro_mesh.datapath.policy import POLICY_MAPS
from xpro_mesh.datapath.slots import ring_size_for
from xpro_mesh.datapath.vouch_bloom import VOUCH_MAPS

__all__ = [
    "BPF_DIR",
    "DEFAULT_PIN_ROOT",
    "AttachResult",
    "BuildOptions",
    "DetachResult",
    "LoadedProgram",
    "XdpStatus",
    "attach",
    "compile_programs",
    "detach",
    "ensure_bpffs",
    "load",
    "pin_dir_for",
    "require_root",
    "status",
]

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
SOURCE = BPF_DIR / "xpro.c"
DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/xpro")
PROGRAMS = ("xpro_filter",)
# Pins of data path v1, removed by detach so an upgrade leaves nothing behind.
LEGACY_PINS = ("pairs", "dests", "apply_ops", "prog_apply")
MODES = ("native", "generic", "auto")


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """How to build bpf/xpro.c."""

    pin_dir: Path | None = None  # None: unpinned maps (tests, bench)
    sizes: MapSizes = field(default_factory=MapSizes)
    test_clock: bool = False  # -DXPRO_TEST_CLOCK: the clock map's test_now is the clock
    defines: tuple[str, ...] = ()  # extra NAME or NAME=VALUE macros

    def cflags(self) -> list[str]:
        flags = [
            f"-I{BPF_DIR}",
            f"-DXPRO_PAIRS_MAX={self.sizes.pairs_max}",
            f"-DXPRO_DESTS_MAX={self.sizes.dests_max}",
            f"-DXPRO_PAIR_RING={ring_size_for(self.sizes.pairs_max)}",
            f"-DXPRO_DEST_RING={ring_size_for(self.sizes.dests_max)}",
            "-Wno-unused-function",
        ]
        if self.pin_dir is not None:
            pin = str(self.pin_dir)
            if any(ch in pin for ch in '"\\\n'):
                raise DatapathError(f"pin directory {pin!r} has characters bcc cannot take")
            flags.append(f'-DXPRO_PIN_DIR="{pin}"')
        if self.test_clock:
            flags.append("-DXPRO_TEST_CLOCK")
        flags += [f"-D{d}" for d in self.defines]
        return flags


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise NotRootError(what)


def _import_bcc() -> Any:
    try:
        import bcc  # the one place bcc is imported
    except Exception as exc:  # ImportError, or a broken libbcc
        raise BccMissingError(str(exc) or type(exc).__name__) from None
    return bcc


def _log_dir() -> Path:
    for candidate in (Path("/run/xpro/log"), Path(tempfile.gettempdir())):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    return Path(".")


@contextlib.contextmanager
def _stderr_captured() -> Iterator[Callable[[], bytes]]:
    """Send fd 2 (where libbcc prints compiler and verifier output) to a
    temporary file; yields a function returning what was written."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)

        def text() -> bytes:
            sink.seek(0)
            return sink.read()

        try:
            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _save_log(log_tag: str, content: bytes) -> Path:
    log = _log_dir() / f"{log_tag}.verifier.log"
    log.write_bytes(content)
    return log


def compile_programs(
    source: Path, cflags: Sequence[str], functions: Sequence[str], *, log_tag: str = "xpro"
) -> tuple[Any, dict[str, int]]:
    """Compile ``source`` with bcc and load ``functions`` as XDP programs.

    Returns the bcc object (keep it alive while the fds are used) and the
    program fds. On failure, the compiler or verifier output is saved to a
    log file whose path is in the error.
    """
    bcc = _import_bcc()
    fds: dict[str, int] = {}
    with _stderr_captured() as output:
        try:
            bpf = bcc.BPF(src_file=str(source).encode(), cflags=list(cflags))
        except Exception:
            raise CompileError(_save_log(log_tag, output())) from None
        for name in functions:
            try:
                fds[name] = bpf.load_func(name.encode(), bcc.BPF.XDP).fd
            except Exception:
                bpf.cleanup()
                raise VerifierError(name, _save_log(log_tag, output())) from None
    return bpf, fds


class LoadedProgram:
    """The filter of bpf/xpro.c loaded in this process, with its maps."""

    def __init__(self, bpf: Any, prog_fds: dict[str, int]) -> None:
        self._bpf = bpf
        self.prog_fds = dict(prog_fds)
        self.filter_fd = prog_fds["xpro_filter"]
        self.map_fds = {name: int(bpf[name.encode()].map_fd) for name in MAP_LAYOUT}
        # bpf/xpro_policy.h's maps (xpro_mesh/datapath/policy.py opens them).
        self.policy_fds = {name: int(bpf[name.encode()].map_fd) for name in POLICY_MAPS}
        # bpf/xpro_vouch.h's maps (xpro_mesh/datapath/vouch_bloom.py opens them).
        self.vouch_fds = {name: int(bpf[name.encode()].map_fd) for name in VOUCH_MAPS}
        self.filled_rings = False
        with self.maps() as maps:
            if int(maps.ring_ctl_size()) == 0:
                maps.fill_rings()
                self.filled_rings = True

    def maps(self, *, recover: bool = False) -> BpfMaps:
        """A backend over these maps (valid while this object is open)."""
        return BpfMaps(self.map_fds, owns_fds=False, recover=recover)

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> LoadedProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(
    options: BuildOptions, *, log_tag: str = "xpro", extra_programs: Sequence[str] = ()
) -> LoadedProgram:
    """Compile bpf/xpro.c and load the filter (maps pinned if asked);
    ``extra_programs`` (e.g. the bench baselines) are loaded too."""
    bpf, fds = compile_programs(
        SOURCE, options.cflags(), (*PROGRAMS, *extra_programs), log_tag=log_tag
    )
    return LoadedProgram(bpf, fds)


# ---- bpffs and pins ---------------------------------------------------------


def pin_dir_for(pin_root: Path, iface: str) -> Path:
    return Path(pin_root) / iface


def _mounts() -> list[tuple[str, str]]:
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                out.append((parts[1].replace("\\040", " "), parts[2]))
    return out


def _fs_type(path: Path) -> str:
    path = path.resolve()
    best, kind = "", ""
    for mnt, fstype in _mounts():
        if (path == Path(mnt) or Path(mnt) in path.parents) and len(mnt) >= len(best):
            best, kind = mnt, fstype
    return kind


def ensure_bpffs(pin_root: Path) -> str | None:
    """Make ``pin_root`` a directory on a bpffs, mounting one when missing.
    Returns a note when it mounted."""
    pin_root = Path(pin_root)
    if _fs_type(pin_root) == "bpf":
        pin_root.mkdir(parents=True, exist_ok=True)
        return None
    if _private_mount_namespace():
        raise DatapathError(
            f"{pin_root} is not on a bpffs in this mount namespace (ip netns exec remounts "
            "/sys), and pins made here would vanish with it: use --pin-root on a bpffs "
            "shared with the host, e.g. /run/xpro/bpf/<ns>"
        )
    sys_bpf = Path("/sys/fs/bpf")
    target = sys_bpf if sys_bpf == pin_root or sys_bpf in pin_root.parents else pin_root
    target.mkdir(parents=True, exist_ok=True)
    libc = ct.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", os.fsencode(target), b"bpf", 0, None) != 0:
        err = ct.get_errno()
        raise DatapathError(f"cannot mount bpffs at {target}: {os.strerror(err)}")
    pin_root.mkdir(parents=True, exist_ok=True)
    return f"mounted bpffs at {target}"


def _private_mount_namespace() -> bool:
    """True in a mount namespace of our own, unlike our parent's: what
    ``ip netns exec`` (unshare, remount /sys, exec) leaves us in. A bpffs
    mounted there, and its pins, vanish when the process exits."""
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink(f"/proc/{os.getppid()}/ns/mnt")
    except OSError:
        return False


def _pinned_sizes(pin_dir: Path) -> MapSizes | None:
    """The live slot arrays' sizes when pinned (and check every pinned layout)."""
    found: dict[str, int] = {}
    for name, (key_size, value_size) in MAP_LAYOUT.items():
        path = pin_dir / name
        if name == "events" or not path.exists():
            continue
        fd = libbpf.obj_get(str(path))
        try:
            info = libbpf.map_info(fd)
        finally:
            os.close(fd)
        if (info.key_size, info.value_size) != (key_size, value_size):
            raise DatapathError(
                f"pinned map {path} was made by another version (key/value {info.key_size}/"
                f"{info.value_size}, expected {key_size}/{value_size}); run `xpro-mesh xdp "
                f"detach` first"
            )
        found[name] = info.max_entries
    if "pair_slots" not in found or "dest_slots" not in found:
        return None
    return MapSizes(pairs_max=found["pair_slots"], dests_max=found["dest_slots"])


def _ifindex(iface: str) -> int:
    try:
        return socket.if_nametoindex(iface)
    except OSError:
        raise NoSuchInterfaceError(iface) from None


# ---- attach / detach --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttachResult:
    iface: str
    mode: str  # "native" or "generic": what is in use
    prog_id: int
    pin_dir: Path
    reused_maps: bool  # live pinned maps were found and kept
    config: XdpConfig
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DetachResult:
    iface: str
    detached: tuple[str, ...]  # modes a program was removed from
    pins_removed: int


@dataclass(frozen=True, slots=True)
class XdpStatus:
    iface: str
    mode: str | None  # "native", "generic" or None
    prog_id: int
    pin_dir: Path
    pinned: bool


def _attached(ifindex: int) -> tuple[int, int]:
    return libbpf.xdp_query(ifindex)


def _clock_notes(config: XdpConfig) -> list[str]:
    if config.clock is not ClockSource.COARSE:
        return []
    tick = clock.coarse_resolution_ns()
    shortest = min(config.t_t2, config.t_t3)
    if shortest < 100 * tick:
        return [
            f"coarse clock ticks every {tick / 1e6:g} ms, over 1% of the shortest window "
            f"({shortest / 1e6:g} ms): consider clock=precise"
        ]
    return []


def attach(
    iface: str,
    *,
    config: XdpConfig | None = None,
    sizes: MapSizes | None = None,
    pin_root: Path = DEFAULT_PIN_ROOT,
    mode: str = "auto",
    replace: bool = False,
) -> AttachResult:
    """Load the filter with pinned maps and attach it to ``iface``.

    ``config`` None keeps the live config of reused maps (defaults when
    new). ``mode``: native (driver), generic (skb) or auto (native, else
    generic). Re-attaching replaces our own program atomically and keeps
    state; another XDP program on ``iface`` (a load balancer, a DDoS
    appliance's) is replaced only with ``replace`` (ForeignProgramError).
    """
    if mode not in MODES:
        raise DatapathError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    require_root("xdp attach")
    ifindex = _ifindex(iface)
    foreign = foreign_program(iface, pin_root=pin_root)
    if foreign and not replace:
        raise ForeignProgramError(
            f"{iface} already runs XDP program id {foreign}, which is not xpro-mesh's filter: "
            "pass --replace to replace it (it stops running), or remove it first "
            f"(ip link set dev {iface} xdp off)"
        )
    _import_bcc()  # fail before touching anything
    notes: list[str] = []
    pin_dir = pin_dir_for(pin_root, iface)
    made = [d for d in (Path(pin_root), pin_dir) if not d.exists()]
    note = ensure_bpffs(Path(pin_root))
    if note:
        notes.append(note)
    pin_dir.mkdir(parents=True, exist_ok=True)
    try:
        live = _pinned_sizes(pin_dir)
        sizes = sizes or MapSizes()
        if live is not None and live != sizes:
            notes.append(
                f"keeping the live maps of {live.pairs_max} pair and {live.dests_max} "
                "destination slots"
            )
            sizes = live
        prog = load(BuildOptions(pin_dir=pin_dir, sizes=sizes), log_tag=f"xpro-{iface}")
    except BaseException:
        for d in reversed(made):  # leave no empty directories behind
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    try:
        maps = prog.maps()
        if config is not None or not maps.config_written():
            maps.set_config(config or XdpConfig())
        maps.sync_clock()
        live_config = maps.get_config()
        notes += _clock_notes(live_config)
        for pin_name, fd in zip(PROG_PINS, (prog.filter_fd,), strict=True):
            path = pin_dir / pin_name
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            libbpf.obj_pin(fd, str(path))
        used = _attach_fd(ifindex, iface, prog.filter_fd, mode)
        prog_id = libbpf.prog_id(prog.filter_fd)
    finally:
        prog.close()
    return AttachResult(iface, used, prog_id, pin_dir, live is not None, live_config, tuple(notes))


def foreign_program(iface: str, *, pin_root: Path = DEFAULT_PIN_ROOT) -> int:
    """The id of an XDP program on ``iface`` that is not our pinned filter,
    0 when the interface has none or runs ours (read-only: nothing changes)."""
    ifindex = _ifindex(iface)
    ours = 0
    pin = pin_dir_for(pin_root, iface) / PROG_PINS[0]
    if pin.exists():
        with contextlib.suppress(OSError):
            fd = libbpf.obj_get(str(pin))
            try:
                ours = libbpf.prog_id(fd)
            finally:
                os.close(fd)
    for attached in _attached(ifindex):
        if attached and attached != ours:
            return attached
    return 0


def _attach_fd(ifindex: int, iface: str, fd: int, mode: str) -> str:
    drv, skb = _attached(ifindex)
    if mode in ("native", "auto"):
        if skb:
            libbpf.xdp_detach(ifindex, libbpf.XDP_FLAGS_SKB_MODE)
        try:
            libbpf.xdp_attach(ifindex, fd, libbpf.XDP_FLAGS_DRV_MODE)
            return "native"
        except OSError as exc:
            if mode == "native":
                raise DatapathError(
                    f"native XDP attach to {iface} failed ({exc.strerror}); "
                    "the driver may lack XDP support: use --mode generic or auto"
                ) from None
    if drv:
        libbpf.xdp_detach(ifindex, libbpf.XDP_FLAGS_DRV_MODE)
    try:
        libbpf.xdp_attach(ifindex, fd, libbpf.XDP_FLAGS_SKB_MODE)
    except OSError as exc:
        raise DatapathError(f"generic XDP attach to {iface} failed ({exc.strerror})") from None
    return "generic"


def detach(iface: str, *, pin_root: Path = DEFAULT_PIN_ROOT) -> DetachResult:
    """Remove the XDP program (either mode) and every pin; nothing is left."""
    require_root("xdp detach")
    detached: list[str] = []
    try:
        ifindex: int | None = socket.if_nametoindex(iface)
    except OSError:
        ifindex = None  # interface gone: its program went with it; clean the pins
    if ifindex is not None:
        drv, skb = _attached(ifindex)
        if drv:
            libbpf.xdp_detach(ifindex, libbpf.XDP_FLAGS_DRV_MODE)
            detached.append("native")
        if skb:
            libbpf.xdp_detach(ifindex, libbpf.XDP_FLAGS_SKB_MODE)
            detached.append("generic")
    pin_dir = pin_dir_for(pin_root, iface)
    removed = 0
    for name in (*MAP_LAYOUT, *POLICY_MAPS, *VOUCH_MAPS, *PROG_PINS, *LEGACY_PINS):
        try:
            (pin_dir / name).unlink()
            removed += 1
        except FileNotFoundError:
            pass
    for d in (pin_dir, Path(pin_root)):
        with contextlib.suppress(OSError):  # not empty, a mount point, or absent
            d.rmdir()
    if ifindex is None and not removed:
        raise NoSuchInterfaceError(iface)
    return DetachResult(iface, tuple(detached), removed)


def status(iface: str, *, pin_root: Path = DEFAULT_PIN_ROOT) -> XdpStatus:
    ifindex = _ifindex(iface)
    drv, skb = _attached(ifindex)
    mode = "native" if drv else "generic" if skb else None
    pin_dir = pin_dir_for(pin_root, iface)
    return XdpStatus(iface, mode, drv or skb, pin_dir, (pin_dir / "pair_slots").exists())
