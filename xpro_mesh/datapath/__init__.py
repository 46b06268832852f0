"""The data path: Algorithm 2 in XDP (``bpf/xpro.c``) and its userspace side
(v2: ``docs/kernel-agent-contract.md``).

* :mod:`.backend` — the map backend interface the agent codes against;
* :mod:`.slots` — the agent's side of the slot arrays (reads, view writes,
  expiry, free rings), shared by both backends;
* :mod:`.bpf_maps` — the backend over the live, pinned BPF maps (mmapped);
* :mod:`.memory` — the backend in plain memory, the packet rule in Python;
* :mod:`.loader` — build, load, pin, attach, detach (the one bcc importer);
* :mod:`.structs` — ctypes and numpy mirrors of ``bpf/xpro.h``;
* :mod:`.clock` — kernel clock <-> cluster time, the one conversion;
* :mod:`.config` — thresholds and policy as one validated object;
* :mod:`.libbpf` — ctypes bindings to libbpf.so.1 (fds, test runs, ring buffer).

Its benchmark is :mod:`xpro_mesh.bench.datapath`.
"""
