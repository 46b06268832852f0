#!/usr/bin/env bash
# One idempotent set-up path for xpro-mesh on Debian 12 (root).
# Used by the README, by .ci/run, by `make` and by the Ansible role.
#
#   scripts/setup.sh            apt packages + kernel headers + bpffs + .venv
#   XPRO_SKIP_APT=1 ...          skip apt (packages already present)
#   XPRO_VENV=/path ...          where the virtual environment goes (default ./.venv)
#   XPRO_EXTRAS=master ...       pip extras: dev (default: lab, master, linters, tests),
#                                lab, master, or empty for a proxy (the core alone)
#
# Debian's python3-bpfcc is the only bcc: the PyPI package called `bcc` is an
# unrelated project and is never installed. The venv is made from Debian's
# /usr/bin/python3 with --system-site-packages so `import bcc` works.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${XPRO_VENV:-$here/.venv}
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: must run as root (apt, /lib/modules, bpffs)" >&2
  exit 1
fi

extras=${XPRO_EXTRAS-dev}
# What a proxy runs: the kernel program's toolchain (bcc), iproute2, python.
packages=(
  python3 python3-venv python3-dev python3-bpfcc bpfcc-tools libbpf1
  iproute2 ethtool
)
# The lab (namespaces, spoofed traffic), the tests and the linters.
if [[ ",$extras," == *",dev,"* || ",$extras," == *",lab,"* ]]; then
  # iptables (-nft): the NFQUEUE target, as this kernel has no nft queue;
  # libnetfilter-queue-dev and gcc: the lab extra's netfilterqueue builds
  # against them (the netem delay's userspace delayer)
  packages+=(iputils-ping nftables iptables libnetfilter-queue-dev gcc netsniff-ng openssh-server make git)
fi
if [[ ",$extras," == *",dev,"* || ",$extras," == *",master,"* ]]; then
  packages+=(redis-server)
fi
# make lint (shellcheck), the metrics and rules checks (promtool, from
# Debian's prometheus), the live page's browser test (chromium).
if [[ ",$extras," == *",dev,"* ]]; then
  packages+=(shellcheck prometheus chromium)
fi

if [ -z "${XPRO_SKIP_APT:-}" ]; then
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  kver=$(uname -r)
  if ! dpkg-query -W -f='${Status}' "linux-headers-$kver" 2>/dev/null | grep -q 'install ok installed' \
     && ! dpkg-query -W -f='${Status}' linux-headers-amd64 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("__headers__")
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    real=()
    for p in "${missing[@]}"; do [ "$p" = "__headers__" ] || real+=("$p"); done
    [ ${#real[@]} -gt 0 ] && apt-get install -y -q --no-install-recommends "${real[@]}"
    if [[ " ${missing[*]} " == *" __headers__ "* ]]; then
      # Prefer the exact headers for the running kernel; fall back to the
      # distro's generic ones (XDP programs use UAPI structures only).
      apt-get install -y -q "linux-headers-$kver" 2>/dev/null \
        || apt-get install -y -q linux-headers-amd64
    fi
  else
    say "apt packages present"
  fi
fi

# Kernel headers where bcc looks for them: /lib/modules/$(uname -r)/{build,source}.
kver=$(uname -r)
mod=/lib/modules/$kver
if [ ! -e "$mod/build/include/linux/kconfig.h" ] && [ ! -e "$mod/build/include/generated/autoconf.h" ]; then
  if [ -d "/usr/src/linux-headers-$kver" ]; then
    build=/usr/src/linux-headers-$kver
  else
    build=$(find /usr/src -maxdepth 1 -name 'linux-headers-*-amd64' 2>/dev/null | sort -V | tail -n 1 || true)
  fi
  [ -n "$build" ] || { echo "setup.sh: no linux-headers tree under /usr/src" >&2; exit 1; }
  common=${build%-amd64}-common
  [ -d "$common" ] || common=$build
  say "linking $mod/build -> $build, $mod/source -> $common"
  mkdir -p "$mod"
  ln -sfn "$build" "$mod/build"
  ln -sfn "$common" "$mod/source"
else
  say "kernel headers in place for $kver"
fi

# bpffs: the default pin root, and one outside /sys for the lab (ip netns exec
# remounts /sys, which hides /sys/fs/bpf from namespaced processes).
mountpoint -q /sys/fs/bpf || { mkdir -p /sys/fs/bpf; mount -t bpf bpf /sys/fs/bpf; say "mounted bpffs at /sys/fs/bpf"; }
mkdir -p /run/xpro/bpf
mountpoint -q /run/xpro/bpf || { mount -t bpf bpf /run/xpro/bpf; say "mounted bpffs at /run/xpro/bpf"; }

# The virtual environment, on Debian's python so that `import bcc` works.
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys; sys.exit(0 if sys.base_prefix == "/usr" else 1)'; then
  say "creating venv $venv (Debian python3, --system-site-packages)"
  rm -rf "$venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
stamp=$venv/.xpro-installed
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  target=$here
  [ -z "$extras" ] || target="${here}[${extras}]"
  say "pip install -e .${extras:+[$extras]}"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e "$target"
  touch "$stamp"
else
  say "python packages up to date"
fi
"$venv/bin/python" -c 'import bcc, sys; print("[setup] bcc importable from", bcc.__file__)'
# Debian's bcc shows up in pip as "bcc" from dist-packages; anything else is
# the unrelated PyPI project of the same name.
bcc_loc=$("$venv/bin/python" -m pip show bcc 2>/dev/null | sed -n 's/^Location: //p')
if [ -n "$bcc_loc" ] && [ "$bcc_loc" != /usr/lib/python3/dist-packages ]; then
  echo "setup.sh: the unrelated PyPI package 'bcc' is installed at $bcc_loc; remove it" >&2
  exit 1
fi
say "ready: source $venv/bin/activate"
