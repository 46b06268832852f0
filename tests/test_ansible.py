"""``ansible-playbook deploy/site.yml`` for real: three hosts that are network
namespaces on one bridge, each with its own sshd, deployed over ssh from this
process (the control node) by the role ``deploy/ansible/roles/xpro_mesh``.

The hosts share this machine's filesystem, so the inventory gives each its own
``xpro_mesh_etc_dir``, ``xpro_mesh_run_dir``, ``xpro_mesh_log_dir`` and controller, and all of
them one ``xpro_mesh_install_dir`` that they set up one at a time
(``xpro_mesh_install_throttle: 1``). The agents run the memory backend: the XDP
path has its own tests. The role ships ``git archive HEAD`` of a snapshot of
this work tree (a throw-away repository in the test's directory), so the code
deployed is the code under test. The namespaces have no route to a package
index, so the hosts' pip installs from a wheelhouse that this process
downloads first (``xpro_mesh_setup_environment``: PIP_NO_INDEX, PIP_FIND_LINKS),
as an operator would for offline hosts.

Runtime on the 2-core reference machine while other work loads it (load 4-7):
2.5 to 4 minutes. The first playbook run takes 65-90 s (scripts/setup.sh's pip
install into a fresh virtualenv, from the wheelhouse, is about 20 s of it), the
second 60-80 s, nearly all of it Ansible starting a module per task and host.
Each case of ``test_role_stops_a_host_with_bad_settings_...`` takes 2-9 s.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import IPRoute, NetNS

REPO = Path(__file__).resolve().parent.parent
SSHD = "/usr/sbin/sshd"
HOSTS = ("h0", "h1", "h2")
API = "http://127.0.0.1:7947"  # the role's default, on each namespace's own loopback
# What a checkout leaves out of a commit (.gitignore) plus the repository itself.
SNAPSHOT_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", ".mypy_cache",
    ".ruff_cache", ".hypothesis", "build", "dist", "out", "*.verifier.log",
)  # fmt: skip
RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


@dataclass(frozen=True, slots=True)
class Host:
    """One inventory host: a namespace, its address on the bridge, and its own
    directory for sshd's files and the role's per-host paths."""

    name: str
    netns: str
    address: str
    home: Path

    @property
    def etc_dir(self) -> Path:
        return self.home / "etc"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"


@dataclass(frozen=True, slots=True)
class Mesh:
    hosts: tuple[Host, ...]
    client_key: Path
    control_path_dir: Path


@dataclass(frozen=True, slots=True)
class PlaybookRun:
    returncode: int
    seconds: float
    output: str
    recap: dict[str, dict[str, int]]


def _ansible_playbook() -> str:
    beside = Path(sys.executable).parent / "ansible-playbook"
    found = str(beside) if beside.exists() else shutil.which("ansible-playbook")
    if found is None:
        pytest.skip("ansible-playbook is not installed (pip install -e '.[dev]' installs it)")
    return found


def _netns_inode(name: str) -> tuple[int, int]:
    st = os.stat(f"/var/run/netns/{name}")
    return (st.st_dev, st.st_ino)


def _pids_where(match: Callable[[int], bool]) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if match(int(entry.name)):
                    pids.append(int(entry.name))
    return pids


def _in_netns(name: str) -> Callable[[int], bool]:
    inode = _netns_inode(name)

    def match(pid: int) -> bool:
        st = os.stat(f"/proc/{pid}/ns/net")
        return (st.st_dev, st.st_ino) == inode

    return match


def _mentions(text: str) -> Callable[[int], bool]:
    needle = text.encode()
    return lambda pid: needle in Path(f"/proc/{pid}/cmdline").read_bytes()


def _terminate(pids: list[int]) -> None:
    """SIGTERM, then SIGKILL what is left after 5 s."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.77.N.0/24 that no route of this (the root) namespace overlaps."""
    with IPRoute() as ipr:
        used = [
            ipaddress.ip_network(f"{route.get('dst')}/{route['dst_len']}", strict=False)
            for route in ipr.get_routes(family=socket.AF_INET)
            if route.get("dst")
        ]
    for n in range(256):
        net = ipaddress.IPv4Network(f"10.77.{n}.0/24")
        if not any(net.overlaps(other) for other in used):
            return net
    raise RuntimeError("no free 10.77.N.0/24 in the root namespace")


def _wire(switch: str, hosts: tuple[Host, ...], uplink: str, control: str) -> None:
    """Bridge br0 in ``switch``; eth0 of every host and ``uplink`` of the root
    namespace (address ``control``) are its ports."""
    with NetNS(switch) as sw:
        sw.link("add", ifname="br0", kind="bridge")
        bridge = sw.link_lookup(ifname="br0")[0]
        sw.link("set", index=bridge, state="up")
    ports = []
    for i, host in enumerate(hosts):
        with NetNS(host.netns) as ns:
            peer = {"ifname": f"p{i}", "net_ns_fd": switch}
            ns.link("add", ifname="eth0", kind="veth", peer=peer)
            eth0 = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=eth0, address=host.address, prefixlen=24)
            ns.link("set", index=eth0, state="up")
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        ports.append(f"p{i}")
    with IPRoute() as ipr:
        ipr.link("add", ifname=uplink, kind="veth", peer={"ifname": "up", "net_ns_fd": switch})
        index = ipr.link_lookup(ifname=uplink)[0]
        ipr.addr("add", index=index, address=control, prefixlen=24)
        ipr.link("set", index=index, state="up")
    ports.append("up")
    with NetNS(switch) as sw:
        for port in ports:
            sw.link("set", index=sw.link_lookup(ifname=port)[0], master=bridge, state="up")


def _start_sshd(host: Host, authorized_keys: Path) -> subprocess.Popen[bytes]:
    """A real sshd on port 22 of the host's address, inside its namespace, so
    that everything a session starts (the agent too) lives there."""
    host.home.mkdir(parents=True, exist_ok=True)
    host_key = host.home / "ssh_host_ed25519_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", str(host_key)],
        check=True,
    )
    config = host.home / "sshd_config"
    config.write_text(
        f"ListenAddress {host.address}:22\n"
        f"HostKey {host_key}\n"
        f"PidFile {host.home / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {authorized_keys}\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "PrintMotd no\n"
        "X11Forwarding no\n"
        "MaxStartups 50\n"
        "MaxSessions 50\n"
        "Subsystem sftp internal-sftp\n"
    )
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    log = host.home / "sshd.log"
    enter = f"--net=/var/run/netns/{host.netns}"
    proc = subprocess.Popen(
        ["nsenter", enter, SSHD, "-D", "-f", str(config), "-E", str(log)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host.address, 22), timeout=1):
            return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            text = log.read_text() if log.exists() else ""
            raise AssertionError(f"sshd for {host.name} did not come up (rc {proc.poll()}): {text}")
        time.sleep(0.1)


def _snapshot(into: Path) -> Path:
    """This work tree as one commit of a throw-away repository, so the role's
    ``git archive`` ships the code under test (and the project's repository
    is never touched). A fixed commit date: the files keep the same mtime."""
    shutil.copytree(REPO, into, ignore=SNAPSHOT_IGNORE, symlinks=True)
    env = {
        **os.environ,
        "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
        "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    ident = ["-c", "user.name=xpro-mesh tests", "-c", "user.email=tests@invalid"]
    for args in (["init", "-q"], ["add", "-A"], [*ident, "commit", "-q", "-m", "snapshot"]):
        subprocess.run(["git", "-C", str(into), *args], check=True, env=env)
    return into


def _wheelhouse(into: Path) -> Path:
    """Every wheel a proxy's ``pip install -e .[master]`` needs, build backend included,
    fetched here on the control node (from pip's cache after the first time)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    requirements = [
        *project["build-system"]["requires"],
        *project["project"]["dependencies"],
        *project["project"]["optional-dependencies"]["master"],
        "pip",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "-d", str(into), *requirements],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"pip download failed: {proc.stderr[-3000:]}"
    return into


@pytest.fixture
def mesh(netns: Callable[[str], str], tmp_path: Path) -> Iterator[Mesh]:
    """Three ssh-reachable hosts; at teardown, also on failure, every process
    in their namespaces (sshd, its sessions, the agents) is ended, the ssh
    control masters too, and the uplink removed (``netns`` removes the rest)."""
    subnet = _free_subnet()
    switch = netns("xa-sw")
    hosts = tuple(
        Host(name, netns(f"xa-{name}"), str(subnet[i + 1]), tmp_path / name)
        for i, name in enumerate(HOSTS)
    )
    uplink = f"xa{uuid.uuid4().hex[:8]}"
    control_path_dir = Path(tempfile.mkdtemp(prefix="xa-cp-"))  # short: a socket path
    sshds: list[subprocess.Popen[bytes]] = []
    try:
        _wire(switch, hosts, uplink, str(subnet[254]))
        client_key = tmp_path / "id_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client_key)], check=True
        )
        authorized_keys = tmp_path / "authorized_keys"
        shutil.copy(f"{client_key}.pub", authorized_keys)
        for host in hosts:
            sshds.append(_start_sshd(host, authorized_keys))
        yield Mesh(hosts, client_key, control_path_dir)
    finally:
        for host in hosts:
            _terminate(_pids_where(_in_netns(host.netns)))
        for proc in sshds:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        _terminate(_pids_where(_mentions(str(control_path_dir))))
        shutil.rmtree(control_path_dir, ignore_errors=True)
        with IPRoute() as ipr, contextlib.suppress(Exception):
            for index in ipr.link_lookup(ifname=uplink):
                ipr.link("del", index=index)
        # The virtualenv and the wheels are 100+ MB each; the logs stay.
        for bulky in ("opt", "wheels"):
            shutil.rmtree(tmp_path / bulky, ignore_errors=True)


def _inventory(mesh: Mesh, tmp_path: Path, source: Path, wheels: Path, key: str) -> Path:
    ssh_args = (
        "-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        "-o IdentitiesOnly=yes -o ConnectTimeout=10"
    )
    inventory = {
        "xpro_mesh": {
            "hosts": {
                host.name: {
                    "ansible_host": host.address,
                    "xpro_mesh_etc_dir": str(host.etc_dir),
                    "xpro_mesh_run_dir": str(host.run_dir),
                    "xpro_mesh_log_dir": str(host.log_dir),
                    "xpro_mesh_state_dir": str(host.home / "state"),
                    "xpro_mesh_controller_path": str(host.home / "xpro-mesh-agent"),
                }
                for host in mesh.hosts
            },
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(mesh.client_key),
                "ansible_ssh_common_args": ssh_args,
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_remote_tmp": str(tmp_path / "remote-tmp"),
                "xpro_mesh_source_dir": str(source),
                "xpro_mesh_install_dir": str(tmp_path / "opt"),
                "xpro_mesh_install_throttle": 1,
                "xpro_mesh_setup_environment": {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)},
                "xpro_mesh_backend": "memory",
                "xpro_mesh_cluster_keys": [key],
                "xpro_mesh_health_timeout": 60,
                "xpro_mesh_timeout": 60,
            },
        }
    }
    path = tmp_path / "inventory.yml"
    path.write_text(json.dumps(inventory, indent=2))  # JSON is YAML
    return path


def _playbook(
    inventory: Path,
    tmp_path: Path,
    label: str,
    *options: str,
    control_path_dir: Path | None = None,
    serial: str | None = None,
) -> PlaybookRun:
    """Run deploy/site.yml with the project's ansible.cfg, everything Ansible
    writes kept in ``tmp_path``; its output in ``playbook-<label>.out``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        LC_ALL="C.UTF-8",
        LANG="C.UTF-8",
        ANSIBLE_CONFIG=str(REPO / "deploy" / "ansible.cfg"),
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-local"),
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="False",
        ANSIBLE_LOG_PATH=str(tmp_path / f"ansible-{label}.log"),  # with timestamps
    )
    if control_path_dir is not None:
        env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(control_path_dir)
    if serial is not None:
        env["XPRO_MESH_SERIAL"] = serial
    command = [_ansible_playbook(), "-i", str(inventory), *options, str(REPO / "deploy/site.yml")]
    started = time.monotonic()
    proc = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    seconds = time.monotonic() - started
    output = proc.stdout + proc.stderr
    (tmp_path / f"playbook-{label}.out").write_text(output)
    recap = {
        m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
        for m in RECAP.finditer(proc.stdout)
    }
    print(f"ansible-playbook {label} run: {seconds:.1f} s, rc {proc.returncode}, recap {recap}")
    return PlaybookRun(proc.returncode, seconds, output, recap)


def _deploy(
    mesh: Mesh,
    inventory: Path,
    tmp_path: Path,
    label: str,
    *options: str,
    serial: str | None = None,
) -> PlaybookRun:
    run = _playbook(
        inventory, tmp_path, label, *options, control_path_dir=mesh.control_path_dir, serial=serial
    )
    tail = "\n".join(run.output.splitlines()[-60:])
    assert run.returncode == 0, f"{label} run failed (rc {run.returncode}):\n{tail}"
    assert set(run.recap) == set(HOSTS), f"{label} run: no recap for every host:\n{tail}"
    return run


def _status(host: Host) -> dict[str, object]:
    proc = subprocess.run(
        ["nsenter", f"--net=/var/run/netns/{host.netns}",
         sys.executable, "-m", "xpro_mesh", "status", "--json", "--api", API],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    document: dict[str, object] = json.loads(proc.stdout)
    return document


def _thresholds(host: Host) -> dict[str, object]:
    proc = subprocess.run(
        ["nsenter", f"--net=/var/run/netns/{host.netns}", "curl", "-sf", f"{API}/v1/config"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    thresholds: dict[str, object] = json.loads(proc.stdout)["thresholds"]
    return thresholds


def _alive(document: dict[str, object]) -> set[str]:
    peers = document["peers"]
    assert isinstance(peers, list)
    return {peer["node_id"] for peer in peers if peer["state"] == "alive"}


def _agent_pids(mesh: Mesh) -> dict[str, int]:
    return {h.name: int((h.run_dir / "agent.pid").read_text()) for h in mesh.hosts}


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.timeout(1500)
def test_site_playbook_deploys_a_mesh_and_a_second_run_changes_nothing(
    mesh: Mesh, tmp_path: Path
) -> None:
    _ansible_playbook()
    started = time.monotonic()
    key = subprocess.run(
        [sys.executable, "-m", "xpro_mesh", "keygen"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    source, wheels = _snapshot(tmp_path / "source"), _wheelhouse(tmp_path / "wheels")
    inventory = _inventory(mesh, tmp_path, source, wheels, key)

    # --check --diff on fresh hosts previews everything and touches nothing.
    preview = _deploy(mesh, inventory, tmp_path, "check", "--check", "--diff")
    assert all(counts["failed"] == 0 for counts in preview.recap.values()), preview.recap
    assert not (tmp_path / "opt").exists(), "check mode made the install directory"
    assert not any(h.etc_dir.exists() for h in mesh.hosts), "check mode wrote a configuration"
    assert "would unpack" in preview.output

    # A first install of the whole fleet at once (XPRO_MESH_SERIAL=100%).
    first = _deploy(mesh, inventory, tmp_path, "first", serial="100%")
    assert all(counts["changed"] > 0 for counts in first.recap.values()), first.recap
    for host in mesh.hosts:
        assert _alive(_status(host)) == set(HOSTS), f"{host.name} does not see all three alive"
        key_file = host.etc_dir / "cluster.key"
        assert key_file.read_text() == key + "\n"
        assert key_file.stat().st_mode & 0o777 == 0o600
        config = (host.etc_dir / "agent.toml").read_text()
        others = sorted(f"{h.address}:7946" for h in mesh.hosts if h is not host)
        assert f"peers = {json.dumps(others)}" in config
        assert f'advertise = "{host.address}:7946"' in config
    pids = _agent_pids(mesh)

    second = _deploy(mesh, inventory, tmp_path, "second")
    changed = {name: counts["changed"] for name, counts in second.recap.items()}
    assert changed == dict.fromkeys(HOSTS, 0), f"second run is not idempotent: {changed}"
    assert _agent_pids(mesh) == pids, "a run that changed nothing restarted an agent"
    for host in mesh.hosts:
        assert _alive(_status(host)) == set(HOSTS)

    # A threshold-only change is a reload (SIGHUP), rolled out host by host
    # (the default serial): the agents keep running with the new T_F1.
    document = json.loads(inventory.read_text())
    document["xpro_mesh"]["vars"]["xpro_mesh_t_f1"] = 150
    inventory.write_text(json.dumps(document, indent=2))
    third = _deploy(mesh, inventory, tmp_path, "third")
    assert "Reload the agent with its controller" in third.output
    assert "Restart the agent with its controller" not in third.output
    assert _agent_pids(mesh) == pids, "a threshold-only change restarted an agent"
    assert third.output.count("PLAY [") >= 2, "the default serial did not batch the hosts"
    for host in mesh.hosts:
        assert _thresholds(host)["t_f1"] == 150
    print(
        f"test runtime {time.monotonic() - started:.1f} s: check run {preview.seconds:.1f} s, "
        f"first run {first.seconds:.1f} s, second run {second.seconds:.1f} s, "
        f"third (reload) run {third.seconds:.1f} s"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param(
            {"xpro_mesh_cluster_keys": []}, "xpro_mesh_cluster_keys is empty", id="no-keys"
        ),
        pytest.param(
            {"xpro_mesh_cluster_keys": ["c0ffee"]}, "1 malformed key(s)", id="malformed-key"
        ),
        pytest.param(
            {"xpro_mesh_backend": "xdp", "xpro_mesh_iface": ""},
            "xpro_mesh_iface is not set",
            id="no-iface",
        ),
    ],
)
def test_role_stops_a_host_with_bad_settings_with_a_clear_message(
    settings: dict[str, object], message: str, tmp_path: Path
) -> None:
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "/usr/bin/python3",
        "xpro_mesh_backend": "memory",
        "xpro_mesh_cluster_keys": ["ab" * 32],
        **settings,
    }
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"xpro_mesh": {"hosts": {"proxy": host}}}))
    run = _playbook(inventory, tmp_path, "preflight", "--tags", "xpro_mesh_preflight")
    assert run.returncode != 0
    assert run.recap["proxy"]["failed"] == 1
    assert message in run.output, run.output[-3000:]
