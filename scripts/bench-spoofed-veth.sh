#!/bin/bash
# Issue 11: the filter against XDP_DROP-all on a veth between two namespaces of
# its own (sp-tx-PID, sp-rx-PID), trafgen sending 64-byte UDP from random
# IPv4 sources; MODE: dropall | filter | filter_est (a ping client at 20 pps
# established first). Each flood is 4 s (3 of them); everything is removed on
# exit. Prints the sender's packets/s (veth back-pressures it, so it is what
# the receiving XDP program takes). Root, trafgen (netsniff-ng).
# bounded: every trafgen run is 4 s; cleanup on exit
set -u
ID=$$
WORK=$(mktemp -d /tmp/sp-XXXX)
TX=sp-tx-$ID; RX=sp-rx-$ID; A=spa$ID; B=spb$ID
PY=${PY:-/work/main/.venv/bin/python}
export PYTHONPATH=${PYTHONPATH:-$(cd "$(dirname "$0")/.." && pwd)}
PIN=/run/xpro/bpf/sp-$ID
cleanup() { ip netns del $TX 2>/dev/null; ip netns del $RX 2>/dev/null; rm -rf $PIN $WORK 2>/dev/null; }
trap cleanup EXIT
ip netns add $TX; ip netns add $RX
ip link add $A type veth peer name $B
ip link set $A netns $TX; ip link set $B netns $RX
nsenter --net=/var/run/netns/$TX ip addr add 10.77.0.1/24 dev $A
nsenter --net=/var/run/netns/$RX ip addr add 10.77.0.2/24 dev $B
nsenter --net=/var/run/netns/$TX ip link set $A up; nsenter --net=/var/run/netns/$RX ip link set $B up
nsenter --net=/var/run/netns/$TX ip link set lo up; nsenter --net=/var/run/netns/$RX ip link set lo up
# native XDP on veth needs the peer to have an XDP program too (or GRO); attach a pass program on A? not needed for rx on B
DMAC=$(nsenter --net=/var/run/netns/$RX ip -br link show $B | awk '{print $3}')
SMAC=$(nsenter --net=/var/run/netns/$TX ip -br link show $A | awk '{print $3}')
cat > $WORK/flood.cfg <<CFG
{
  eth(da=$DMAC, sa=$SMAC, type=0x0800),
  ipv4(saddr=drnd(), daddr=10.77.0.2, ttl=64),
  udp(sport=40000, dport=9),
  fill(0x00, 18)
}
CFG
txp() { nsenter --net=/var/run/netns/$TX cat /proc/net/dev | tr ':' ' ' | awk -v i=$A '$1==i {print $11}'; }
flood() { # $1 seconds; prints pps the sender got out
  local t0=$(txp); local s0=$(date +%s%N)
  nsenter --net=/var/run/netns/$TX timeout -s INT $1 trafgen --dev $A --conf $WORK/flood.cfg --cpus 1 -q >/dev/null 2>&1
  local t1=$(txp); local s1=$(date +%s%N)
  echo $(( (t1 - t0) * 1000000000 / (s1 - s0) ))
}
mode=${1:?usage: bench-spoofed-veth.sh dropall|filter|filter_est|interleaved}
case $mode in
dropall)
  nsenter --net=/var/run/netns/$RX $PY - <<PYX
from xpro_mesh.datapath import loader, libbpf
from xpro_mesh.datapath.config import MapSizes
import socket
p = loader.load(loader.BuildOptions(sizes=MapSizes(1<<12, 1<<6), defines=("XPRO_BENCH",)), log_tag="sp-drop", extra_programs=("bench_drop","bench_skeleton"))
libbpf.xdp_attach(socket.if_nametoindex("$B"), p.prog_fds["bench_drop"], libbpf.XDP_FLAGS_DRV_MODE)
p.close()
PYX
  for i in 1 2 3; do echo "dropall pps $(flood 4)"; done
  ;;
filter|filter_est)
  nsenter --net=/var/run/netns/$RX $PY -m xpro_mesh xdp attach --iface $B --pin-root $PIN --mode native 2>&1 | head -3
  if [ $mode = filter_est ]; then
    nsenter --net=/var/run/netns/$TX ping -q -i 0.05 -c 140 10.77.0.2 > $WORK/ping.txt 2>&1 &
    sleep 1.5
  fi
  for i in 1 2 3; do
    echo "$mode pps $(flood 4)"
  done
  wait
  nsenter --net=/var/run/netns/$RX $PY -m xpro_mesh xdp stats --iface $B --pin-root $PIN --json > $WORK/stats-$mode.json 2>&1
  cat $WORK/stats-$mode.json; echo; cat $WORK/ping.txt 2>/dev/null | tail -2
  ;;
interleaved)
  # One setup; the receiver's program switched between XDP_DROP-all and the
  # filter every 2 s (5 rounds each), a ping client at 20 pps throughout:
  # the ratio of medians is measured under the same machine load.
  nsenter --net=/var/run/netns/$RX $PY -m xpro_mesh xdp attach --iface $B --pin-root $PIN --mode native 2>&1 | head -1
  FILTER=$(ls $PIN/$B/ | grep -m1 prog)
  nsenter --net=/var/run/netns/$RX $PY - <<PYX
from xpro_mesh.datapath import loader, libbpf
from xpro_mesh.datapath.config import MapSizes
p = loader.load(loader.BuildOptions(sizes=MapSizes(1<<12, 1<<6), defines=("XPRO_BENCH",)), log_tag="sp-drop", extra_programs=("bench_drop","bench_skeleton"))
libbpf.obj_pin(p.prog_fds["bench_drop"], "$PIN/drop")
p.close()
PYX
  nsenter --net=/var/run/netns/$TX ping -q -i 0.05 -c 520 10.77.0.2 > $WORK/ping.txt 2>&1 &
  sleep 2
  echo "warm filter pps $(flood 2)"
  st() { nsenter --net=/var/run/netns/$RX $PY -m xpro_mesh xdp stats --iface $B --pin-root $PIN --json; }
  st > $WORK/before.json
  for i in 1 2 3 4 5; do
    nsenter --net=/var/run/netns/$RX ip link set dev $B xdpdrv off
    nsenter --net=/var/run/netns/$RX ip link set dev $B xdpdrv pinned $PIN/drop
    echo "dropall pps $(flood 2)"
    nsenter --net=/var/run/netns/$RX ip link set dev $B xdpdrv off
    nsenter --net=/var/run/netns/$RX ip link set dev $B xdpdrv pinned $PIN/$B/$FILTER
    echo "filter pps $(flood 2)"
  done
  st > $WORK/after.json
  wait
  $PY - $WORK/before.json $WORK/after.json <<'PYX'
import json, sys
b, a = (json.load(open(f)) for f in sys.argv[1:3])
d = {k: a[k] - b[k] for k in ("pass", "drop_dest", "drop_admit", "probation_drops", "admitted", "new_pairs", "pair_full")}
print("filter rounds:", d, "flood dropped %.3f%%" % (100 * d["drop_dest"] / (d["drop_dest"] + d["pass"])))
print("pairs", a["pairs"], "pairs_free", a["pairs_free"])
PYX
  tail -2 $WORK/ping.txt
  ;;
esac
nsenter --net=/var/run/netns/$RX ip link set $B xdp off 2>/dev/null
