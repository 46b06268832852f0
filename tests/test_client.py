"""xpro_mesh.client without a network: the choice follows the weights,
moves only the clients it must, and every client has a full order."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpro_mesh.client import ClientConfig, Proxy, main, parse_proxies, rendezvous_order

CLIENTS = [f"dev-{i}" for i in range(3000)]


def proxies(weights: dict[str, float]) -> list[Proxy]:
    return [
        Proxy(n, f"10.0.0.{i + 1}", w, (f"10.0.0.{i + 1}", 7947))
        for i, (n, w) in enumerate(sorted(weights.items()))
    ]


def first_choices(ps: list[Proxy]) -> Counter[str]:
    return Counter(rendezvous_order(c, ps)[0].node_id for c in CLIENTS)


def test_each_proxy_gets_its_weights_share_of_the_clients() -> None:
    ps = proxies({"a": 0.5, "b": 0.3, "c": 0.2})
    counts = first_choices(ps)
    for p in ps:
        assert counts[p.node_id] / len(CLIENTS) == pytest.approx(p.weight, abs=0.03)


def test_a_weight_of_zero_gets_no_client_while_another_has_weight() -> None:
    counts = first_choices(proxies({"a": 0.0, "b": 0.6, "c": 0.4}))
    assert counts["a"] == 0


@settings(max_examples=20, deadline=None)
@given(st.dictionaries(st.sampled_from("abcdef"), st.floats(0.05, 1), min_size=2))
def test_a_dead_proxys_clients_move_and_nobody_else_does(weights: dict[str, float]) -> None:
    before = {c: rendezvous_order(c, proxies(weights))[0].node_id for c in CLIENTS[:500]}
    dead = sorted(weights)[0]
    survivors = proxies({n: w for n, w in weights.items() if n != dead})
    for c, chosen in before.items():
        order = rendezvous_order(c, survivors)
        if chosen != dead:
            assert order[0].node_id == chosen
        else:  # to the next of its own order
            full = [p.node_id for p in rendezvous_order(c, proxies(weights))]
            assert order[0].node_id == full[1]


def test_lowering_one_weight_moves_only_clients_off_that_proxy() -> None:
    before = {
        c: rendezvous_order(c, proxies({"a": 0.4, "b": 0.3, "c": 0.3}))[0].node_id for c in CLIENTS
    }
    after = {
        c: rendezvous_order(c, proxies({"a": 0.2, "b": 0.3, "c": 0.3}))[0].node_id for c in CLIENTS
    }
    moved = [c for c in CLIENTS if before[c] != after[c]]
    assert moved and all(before[c] == "a" for c in moved)


def test_the_failover_bound_is_one_interval_and_two_timeouts() -> None:
    cfg = ClientConfig(seeds=(("127.0.0.1", 7947),), timeout_s=0.5)
    assert cfg.failover_bound_s(0.2) == pytest.approx(1.2)


def test_bad_client_settings_are_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="seeds"):
        ClientConfig(seeds=())
    with pytest.raises(ValueError, match="timeout_s"):
        ClientConfig(seeds=(("h", 1),), timeout_s=0)


def test_a_document_that_is_not_a_proxy_list_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_proxies({"weights": []}, 7947)
    doc = {"proxies": [{"node_id": "a", "host": "10.0.0.1", "weight": 1.0}]}
    assert parse_proxies(doc, 8000)[0].api == ("10.0.0.1", 8000)


def test_the_cli_says_in_one_line_when_no_seed_answers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seed", "127.0.0.1:9", "--timeout", "0.2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no seed answered" in err


def test_a_proxy_api_is_reached_where_the_client_is_told_not_on_the_gossiped_host() -> None:
    """The gossiped host is the mesh's address (the lab's service side);
    ``api_of`` maps a node id to where this client reaches its API."""
    doc = {
        "proxies": [
            {"node_id": "p0", "host": "10.20.0.10", "weight": 0.5},
            {"node_id": "p1", "host": "10.20.0.11", "weight": 0.5},
        ]
    }
    listed = parse_proxies(doc, 7947, {"p0": ("10.10.0.10", 7947)})
    assert [p.api for p in listed] == [("10.10.0.10", 7947), ("10.20.0.11", 7947)]
    assert listed[0].host == "10.20.0.10"
