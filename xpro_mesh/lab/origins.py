"""How far apart the agents' rows are: every live agent's ``GET
/v1/origins`` (per origin held: watermark version, rows, summed count)
sampled on one beat, and what the samples say after a mend: in how many
gossip rounds every live node held what every live origin had one beat
earlier, and the largest count error among live origins once it did.

Sampling: one thread per proxy, each moved into its proxy's network
namespace (``setns``; a thread's namespace is its own, the lab's other
threads stay where they are), asks its agent at ``127.0.0.1:API_PORT`` at
the beat's times ``t0 + k·period``. The threads share the host's clock, so
a beat's answers lie within a few milliseconds of each other.

The figures (:func:`settle_figures`, pure):

* **caught up** at beat k: for every live holder N and live origin o ≠ N,
  N's watermark of o is at least o's own clock at beat k-1 (N holds
  everything o had one beat, one gossip round, earlier). Rows keep changing
  under an attack, so "equal now" is not the test: a change of the last
  beat is on its way;
* **count error** at beat k: over the (N, o) whose watermark of o *equals*
  o's clock at beat k (the same rows by the watermark's rule), the largest
  difference between N's summed count of o's rows and o's own, both over
  the rows active in the :data:`ACTIVE_S` before the beat (one cut-off for
  every agent of the beat, so that rows near expiry, which each agent drops
  on its own cycle without a version, do not count). Not 0 means
  rows that compare equal by version do not by count: a merge or expiry
  bug, what "exact counts" excludes. Pairs at different versions are not
  compared (their difference is the change in flight, not an error).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["OriginSampler", "Sample", "enter_netns", "http_status", "settle_figures"]

CLONE_NEWNET = 0x40000000
PERIOD_S = 0.1  # one beat: the lab's gossip round
ACTIVE_S = 2.0  # rows counted: active within this before the beat (expiry is T_T1 + T_T4 = 5 s)
TIMEOUT_S = 0.25  # an agent that does not answer within it counts as not live


@dataclass(frozen=True, slots=True)
class Sample:
    """One agent's answer at one beat: origin -> (version, rows, count)."""

    beat: int
    at: float  # Unix seconds when asked
    origins: dict[str, tuple[tuple[int, int], int, int]]


def parse_origins(doc: Mapping[str, object]) -> dict[str, tuple[tuple[int, int], int, int]]:
    """``GET /v1/origins``'s body as Sample.origins."""
    raw = doc.get("origins")
    out: dict[str, tuple[tuple[int, int], int, int]] = {}
    if not isinstance(raw, dict):
        return out
    for origin, v in raw.items():
        version = v["version"]
        out[str(origin)] = ((int(version[0]), int(version[1])), int(v["rows"]), int(v["count"]))
    return out


def http_status(port: int, path: str) -> tuple[int, bytes] | None:
    """One HTTP/1.0 GET on loopback (in the thread's namespace): the status
    and body, or None when the agent does not answer (dead, restarting,
    stalled past TIMEOUT_S)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
    except OSError:
        return None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split(b" ")
    if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
        return None
    return int(status[1]), body


def _get(port: int, path: str) -> dict[str, object] | None:
    """A GET's JSON object, or None (no answer, not 200, not an object)."""
    answer = http_status(port, path)
    if answer is None or answer[0] != 200:
        return None
    try:
        doc = json.loads(answer[1])
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def enter_netns(ns: str) -> str | None:
    """Move the calling thread into the network namespace file ``ns``
    (its other threads stay where they are); the error, or None."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fd = os.open(ns, os.O_RDONLY)
    except OSError as e:
        return str(e)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            return f"setns: {os.strerror(ctypes.get_errno())}"
    finally:
        os.close(fd)
    return None


@dataclass
class OriginSampler:
    """Samples every proxy's agent on one beat until :meth:`stop`.

    ``proxies``: node id -> network namespace file (``/var/run/netns/xl-p0``)."""

    proxies: Mapping[str, str]
    port: int
    period_s: float = PERIOD_S
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    t0: float = 0.0

    def start(self) -> None:
        self.t0 = time.time() + self.period_s
        for node, ns in self.proxies.items():
            self.samples[node] = []
            t = threading.Thread(target=self._run, args=(node, ns), daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2.0)

    def dump(self, path: str) -> None:
        """Every answer, one JSON line each (node, beat, at, origins)."""
        with open(path, "w") as f:
            for node, seq in sorted(self.samples.items()):
                for s in seq:
                    f.write(
                        json.dumps({"node": node, "beat": s.beat, "at": s.at, "origins": s.origins})
                    )
                    f.write("\n")

    def _run(self, node: str, ns: str) -> None:
        error = enter_netns(ns)
        if error is not None:
            self.errors.append(f"origin sampler {node}: {error}")
            return
        out = self.samples[node]
        beat = 0
        while not self._stop.is_set():
            due = self.t0 + beat * self.period_s
            wait = due - time.time()
            if wait > 0 and self._stop.wait(wait):
                break
            if wait < -self.period_s:  # late (a starved host): skip to the current beat
                beat = int((time.time() - self.t0) / self.period_s)
                continue
            at = time.time()
            since = int((due - ACTIVE_S) * 1e9)  # the same for every agent at this beat
            doc = _get(self.port, f"/v1/origins?active_since={since}")
            if doc is not None:
                with contextlib.suppress(KeyError, TypeError, ValueError, IndexError):
                    out.append(Sample(beat, at, parse_origins(doc)))
            beat += 1


def settle_figures(
    samples: Mapping[str, Sequence[Sample]],
    since: float,
    until: float,
    round_s: float,
    live: set[str] | None = None,
) -> dict[str, object]:
    """What the beats in ``[since, until]`` (Unix seconds) say (module
    docstring): ``rows_caught_up`` (at some beat), ``rows_rounds_to_catch_up``
    (gossip rounds of ``round_s`` from ``since`` to the first such beat),
    ``count_error_max`` (the largest count error from then on; over the
    whole span if never caught up), ``count_comparisons`` (how many (N, o)
    pairs at equal versions were compared), ``count_error_max_raw`` (the
    largest difference at any version: the change in flight included),
    ``beats`` (beats with at least two live answers). ``live``: the nodes
    that count (default: whoever answers at a beat)."""
    by_beat: dict[int, dict[str, Sample]] = {}
    for node, seq in samples.items():
        if live is not None and node not in live:
            continue
        for s in seq:
            by_beat.setdefault(s.beat, {})[node] = s
    beats = sorted(b for b, answers in by_beat.items() if _within(answers, since, until))
    caught_at: float | None = None
    per_beat: list[tuple[bool, int, int, int]] = []  # (caught up by then, error, compared, raw)
    for b in beats:
        now = by_beat[b]
        if len(now) < 2:
            continue
        if caught_at is None and _caught_up(now, by_beat.get(b - 1, {})):
            caught_at = min(s.at for s in now.values())
        per_beat.append((caught_at is not None, *_count_error(now)))
    counted = len(per_beat)
    rounds = None
    if caught_at is not None:
        rounds = math.ceil(max(0.0, caught_at - since) / round_s - 1e-9)
        per_beat = [x for x in per_beat if x[0]]
    valid = [err for _, err, n, _ in per_beat if n]
    compared = sum(n for _, _, n, _ in per_beat)
    raw = [r for *_, r in per_beat]
    return {
        "rows_caught_up": caught_at is not None,
        "rows_rounds_to_catch_up": rounds,
        "count_error_max": max(valid) if valid else None,
        "count_comparisons": compared,
        "count_error_max_raw": max(raw) if raw else None,
        "beats": counted,
    }


def _within(answers: Mapping[str, Sample], since: float, until: float) -> bool:
    return any(since <= s.at <= until for s in answers.values())


def _caught_up(now: Mapping[str, Sample], before: Mapping[str, Sample]) -> bool:
    """Every holder answering now holds, of every origin answering now and
    one beat before, at least what that origin had then."""
    pairs = 0
    for o, then in before.items():
        if o not in now:
            continue
        had = then.origins.get(o)
        if had is None:
            continue
        for holder, s in now.items():
            if holder == o:
                continue
            held = s.origins.get(o)
            if held is None or held[0] < had[0]:
                return False
            pairs += 1
    return pairs > 0


def _count_error(now: Mapping[str, Sample]) -> tuple[int, int, int]:
    """(largest count error at equal versions, comparisons, largest raw difference)."""
    worst = compared = worst_raw = 0
    for o, own_sample in now.items():
        own = own_sample.origins.get(o)
        if own is None:
            continue
        for holder, s in now.items():
            if holder == o:
                continue
            held = s.origins.get(o)
            count = held[2] if held is not None else 0
            worst_raw = max(worst_raw, abs(count - own[2]))
            if held is not None and held[0] == own[0]:
                compared += 1
                worst = max(worst, abs(held[2] - own[2]))
    return worst, compared, worst_raw
