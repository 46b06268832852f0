"""The data path: Algorithm 2 in XDP (``bpf/xpro.c``) and its userspace side.

* :mod:`.backend` — the map backend interface the agent codes against;
* :mod:`.bpf_maps` — the backend over the live, pinned BPF maps;
* :mod:`.memory` — the backend in pure Python (same semantics, no kernel);
* :mod:`.loader` — build, load, pin, attach, detach (the one bcc importer);
* :mod:`.structs` — ctypes mirrors of ``bpf/xpro.h``;
* :mod:`.clock` — kernel clock <-> cluster time, the one conversion;
* :mod:`.config` — thresholds and policy as one validated object;
* :mod:`.libbpf` — ctypes bindings to libbpf.so.1 (fds, test runs, ring buffer).

Its benchmark is :mod:`xpro_mesh.bench.datapath`.
"""
