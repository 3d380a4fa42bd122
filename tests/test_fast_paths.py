"""Every fast path of the hot loop against a straightforward reference (issue #4).

The vectorised code takes shortcuts — clearing only the edges still in play, summing lots by
sparse products, updating stock blocks in place, keeping only the shipments in transit, a
sparse trade network, per-tick metric tables — and each is checked here against a per-agent or
per-lot Python reference written the plain way (``tests/oracle.py`` for clearing).

Tolerance: 1e-9, relative and absolute (tonnes, US$/kg, shares). Both sides add the same
numbers in different orders; double rounding over the few thousand terms of these markets is
below 1e-12, so 1e-9 fails on any real difference in the rule and never on rounding.
"""

from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abm import RareEarthModel, market, metrics, provenance, threads
from abm.scenario import load_scenario
from abm.world import BLOCS, IDLE, OPERATING, RESERVE, Layout, _draw_distinct
from benchmarks.synthetic import synthetic_scenario
from tests.oracle import clear_reference
from tests.worlds import CONFIGS

TOL = dict(rtol=1e-9, atol=1e-9)


def sparse_market(rng, n_buyers, n_sellers, k, shuffle=False):
    """A market shaped like the model's: k suppliers per buyer, edges sorted by buyer."""
    k = min(k, n_sellers)
    seller = np.concatenate(
        [np.sort(rng.choice(n_sellers, k, replace=False)) for _ in range(n_buyers)]
    )
    buyer = np.repeat(np.arange(n_buyers), k)
    n = len(seller)
    args = [
        rng.uniform(10, 100, n) if rng.random() < 0.7 else np.round(rng.uniform(10, 100, n), -1),
        seller,
        buyer,
        rng.random(n) < 0.9,
        rng.random(n) < 0.5,
        rng.uniform(0, 50, n_buyers) * (rng.random(n_buyers) < 0.9),
        rng.uniform(0, 1, n_buyers) * (rng.random() < 0.5),
        rng.uniform(0, 80 * n_buyers * k / n_sellers / 10, n_sellers),
        float(rng.choice([0.5, 8.0, 30.0, 1e12])),
        np.full(n_buyers, 50.0),
        int(rng.integers(1, 11)),
    ]
    if shuffle:
        order = rng.permutation(n)
        for i in (0, 1, 2, 3, 4):
            args[i] = args[i][order]
    return args


def assert_matches_oracle(args):
    result = market.clear(*args)
    flow, orders, unmet = clear_reference(*args)
    np.testing.assert_allclose(result.flow, flow, **TOL)
    np.testing.assert_allclose(result.orders, orders, **TOL)
    np.testing.assert_allclose(result.unmet, unmet, **TOL)
    return result


# ------------------------------------------------------------------ clearing


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 60), st.integers(1, 12), st.integers(1, 20))
def test_clearing_of_sparse_markets_matches_the_per_agent_reference(seed, n_buyers, n_sellers, k):
    rng = np.random.default_rng(seed)
    assert_matches_oracle(sparse_market(rng, n_buyers, n_sellers, k))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_clearing_does_not_depend_on_the_order_of_edges(seed):
    rng = np.random.default_rng(seed)
    args = sparse_market(rng, 30, 8, 5)
    order = rng.permutation(len(args[0]))
    shuffled = [a[order] if i < 5 else a for i, a in enumerate(args)]
    ordered, permuted = market.clear(*args), assert_matches_oracle(shuffled)
    np.testing.assert_allclose(permuted.flow, ordered.flow[order], **TOL)
    np.testing.assert_allclose(permuted.unfilled, ordered.unfilled[order], **TOL)
    np.testing.assert_allclose(permuted.orders, ordered.orders, **TOL)


def test_clearing_a_market_captured_from_a_synthetic_world_matches_the_reference():
    import abm.model

    model = RareEarthModel(synthetic_scenario(600, warmup_ticks=1), rng=3)
    captured = []
    clear = abm.model.market.clear

    def capture(*args, **kwargs):
        captured.append([a.copy() if hasattr(a, "copy") else a for a in args[:11]])
        return clear(*args, **kwargs)

    abm.model.market.clear = capture
    try:
        for _ in range(3):
            model.step()
    finally:
        abm.model.market.clear = clear
    assert len(captured) == 3 * len(model.world.products)
    for args in captured:
        result = assert_matches_oracle(args)
        assert result.flow.sum() > 0 or args[5].sum() == 0


def _clear_with_groups_reference(args, group, cap):
    """Per-agent clearing with export-control groups: the oracle plus a cap per group."""
    cost, seller, buyer, eligible, compliant, demand, minc, available, beta, scale, rounds = args
    left = [float(a) for a in available]
    want = [[d * m, d - d * m] for d, m in zip(demand, minc, strict=True)]
    cap = [float(c) for c in cap]
    flow = [0.0] * len(cost)
    nothing = 1e-12 * max(sum(available) + sum(demand), 1e-300)
    for _ in range(rounds):
        placed = [[0.0, 0.0] for _ in cost]
        for b in set(buyer.tolist()):
            for tranche in (0, 1):
                usable = [
                    e
                    for e in range(len(cost))
                    if buyer[e] == b
                    and eligible[e]
                    and left[seller[e]] > nothing
                    and (tranche == 1 or compliant[e])
                ]
                if usable and want[b][tranche] > 0:
                    best = min(cost[e] for e in usable)
                    weight = {e: np.exp(-beta * (cost[e] - best) / scale[b]) for e in usable}
                    for e in usable:
                        placed[e][tranche] = want[b][tranche] * weight[e] / sum(weight.values())
        received = defaultdict(float)
        for e, (a, b) in enumerate(placed):
            received[seller[e]] += a + b
        if sum(received.values()) <= nothing:
            break
        fill = {s: left[s] / r if r > left[s] else 1.0 for s, r in received.items()}
        passing = defaultdict(float)
        for e, (a, b) in enumerate(placed):
            if group[e] >= 0:
                passing[group[e]] += (a + b) * fill[seller[e]]
        scale_of = {g: cap[g] / p if p > cap[g] else 1.0 for g, p in passing.items()}
        for g, p in passing.items():
            cap[g] -= min(p, cap[g])
        for e, (a, b) in enumerate(placed):
            share = fill[seller[e]] * (scale_of[group[e]] if group[e] >= 0 else 1.0)
            for tranche, amount in ((0, a), (1, b)):
                got = amount * share
                flow[e] += got
                want[buyer[e]][tranche] = max(0.0, want[buyer[e]][tranche] - got)
                left[seller[e]] = max(0.0, left[seller[e]] - got)
    return np.array(flow), np.array(cap)


@pytest.mark.parametrize("seed", range(12))
def test_clearing_under_export_quotas_matches_a_per_agent_reference(seed):
    rng = np.random.default_rng(seed)
    args = sparse_market(rng, 15, 6, 4)
    group = rng.integers(-1, 2, len(args[0]))
    cap = rng.uniform(0, 60, 2)
    vector_cap = cap.copy()
    result = market.clear(*args, group=group, group_cap=vector_cap)
    flow, cap_left = _clear_with_groups_reference(args, group, cap)
    np.testing.assert_allclose(result.flow, flow, **TOL)
    np.testing.assert_allclose(vector_cap, cap_left, **TOL)


def test_logit_within_runs_of_edges_matches_the_general_logit():
    rng = np.random.default_rng(0)
    buyer = np.repeat(np.arange(40), rng.integers(1, 9, 40))
    cost = rng.uniform(10, 100, len(buyer))
    restrict = rng.random(len(buyer)) < 0.6
    scale = rng.uniform(20, 80, 40)
    starts = provenance.run_starts(buyer)
    lengths = np.diff(starts, append=len(buyer))
    for beta in (0.5, 8.0, 1e12):
        with np.errstate(invalid="ignore", over="ignore"):
            mine = market._run_logit(cost, restrict, starts, lengths, beta, scale[buyer])
        general = market.logit_shares(cost, buyer, restrict, 40, beta, scale)
        np.testing.assert_allclose(mine, general, **TOL)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # helper threads expect infinite gaps too
@pytest.mark.parametrize("n_threads", [1, 2])
def test_logit_shares_are_the_same_bits_however_the_runs_are_chunked(monkeypatch, n_threads):
    rng = np.random.default_rng(3)
    buyer = np.repeat(np.arange(300), rng.integers(1, 12, 300))
    cost = rng.uniform(10, 100, len(buyer))
    cost[rng.random(len(buyer)) < 0.05] = np.inf  # unreachable offers
    cost[:4] = np.nan  # and a buyer with an undefined cost
    restrict = rng.random(len(buyer)) < 0.6
    scale, wanted = rng.uniform(20, 80, 300), rng.uniform(0, 5, 300)
    starts = provenance.run_starts(buyer)
    lengths = provenance.run_lengths(starts, len(buyer))
    cases = [(None, 30.0, None), (restrict, scale[buyer], wanted), (None, scale[buyer], wanted)]
    with np.errstate(invalid="ignore", over="ignore"):
        whole = [market._run_logit(cost, r, starts, lengths, 4.0, s, False, w) for r, s, w in cases]
        monkeypatch.setattr(market, "LOGIT_CHUNK", 40)  # about 70 chunks
        monkeypatch.setattr(threads, "MIN_CELLS", 100)
        monkeypatch.setenv(threads.ENV, str(n_threads))
        for (r, s, w), one in zip(cases, whole, strict=True):
            chunked = market._run_logit(cost, r, starts, lengths, 4.0, s, False, w)
            np.testing.assert_array_equal(chunked, one)
    assert np.isfinite(whole[1]).all() and whole[1].sum() > 0
    expected = market.logit_shares(cost, buyer, restrict, 300, 4.0, scale) * wanted[buyer]
    np.testing.assert_allclose(whole[1], np.nan_to_num(expected), **TOL)


@pytest.mark.parametrize("sizes", [[3, 1, 6], [1], [], [2, 2, 2, 1]])
def test_run_lengths_are_the_gaps_between_run_starts(sizes):
    keys = np.repeat(np.arange(len(sizes)), sizes)
    starts = provenance.run_starts(keys)
    lengths = provenance.run_lengths(starts, len(keys))
    assert lengths.tolist() == sizes and lengths.dtype == starts.dtype


# ------------------------------------------------------------------ provenance


def test_routes_sum_lots_into_destinations_like_a_per_lot_loop():
    rng = np.random.default_rng(1)
    attrs = rng.random((30, 7))
    dest, source = rng.integers(0, 12, 200), rng.integers(0, 30, 200)
    routes = provenance.Routes(dest, source, len(attrs))
    for _ in range(3):  # the structure is reused: each call puts in new tonnes
        qty = rng.random(200) * (rng.random(200) < 0.7)
        inflow, mass = routes.inflows(qty, attrs)
        expected_qty, expected_mass = defaultdict(float), defaultdict(lambda: np.zeros(7))
        for d, s, q in zip(dest, source, qty, strict=True):
            expected_qty[d] += q
            expected_mass[d] = expected_mass[d] + q * attrs[s]
        assert routes.dest.tolist() == sorted(expected_qty)
        np.testing.assert_allclose(inflow, [expected_qty[d] for d in routes.dest], **TOL)
        np.testing.assert_allclose(mass, [expected_mass[d] for d in routes.dest], **TOL)


def test_group_sums_of_products_are_bincounts_of_the_products_bit_for_bit():
    rng = np.random.default_rng(8)
    group = rng.integers(0, 13, 5000)
    a, b = 10.0 ** rng.uniform(-6, 4, 5000), 10.0 ** rng.uniform(-3, 3, 5000)
    a[rng.random(5000) < 0.1] = 0.0
    sums = provenance.GroupSums(group, 15).of(a, b)
    np.testing.assert_array_equal(sums, np.bincount(group, a * b, minlength=15))
    assert sums[13:].tolist() == [0.0, 0.0]  # groups without items


@pytest.mark.parametrize("shape", [(), (5,), (3, 4)])
def test_sum_by_matches_a_dictionary_of_sums(shape):
    rng = np.random.default_rng(2)
    keys = rng.integers(0, 9, 300)
    values = rng.random((300, *shape))
    unique, sums = provenance.sum_by(keys, values)
    expected = defaultdict(lambda: np.zeros(shape))
    for k, v in zip(keys, values, strict=True):
        expected[k] = expected[k] + v
    assert unique.tolist() == sorted(expected)
    np.testing.assert_allclose(sums, np.array([expected[k] for k in unique]), **TOL)
    _, same = provenance.sum_by(np.arange(4), values[:4])  # unique and sorted: as given
    np.testing.assert_array_equal(same, values[:4])


@pytest.mark.parametrize("contiguous", [True, False])
def test_mixing_in_place_matches_mass_weighted_averages(contiguous):
    rng = np.random.default_rng(3)
    qty, attrs = rng.random(20) * 10, rng.random((20, 6))
    rows = np.arange(5, 12) if contiguous else np.array([2, 7, 7, 15, 3])
    add = rng.random(len(rows)) * 4
    add[1] = 0.0
    mass = add[:, None] * rng.random((len(rows), 6))
    expected_qty, expected_attrs = qty.copy(), attrs.copy()
    for r, q, m in zip(rows, add, mass, strict=True):
        if q > 0:
            total = expected_qty[r] + q
            expected_attrs[r] = (expected_qty[r] * expected_attrs[r] + m) / total
            expected_qty[r] = total
    provenance.mix_into(qty, attrs, rows, add, mass)
    np.testing.assert_allclose(qty, expected_qty, **TOL)
    np.testing.assert_allclose(attrs, expected_attrs, **TOL)


@pytest.mark.parametrize("split", [False, True])
def test_merged_shipments_mix_exactly_as_their_concatenation(split, monkeypatch):
    """Several shipments mixed at once (a tick's arrivals) give the bits of one
    :func:`provenance.mix_into` call on the shipments concatenated, the first time and when
    the grouping of the same row arrays is reused; other row arrays get their own grouping.
    ``split``: the sums are made in bands of receiving rows on two threads."""
    if split:
        monkeypatch.setattr(threads, "MIN_CELLS", 20)
        monkeypatch.setenv(threads.ENV, "2")
    rng = np.random.default_rng(12)
    # rows get lots from several shipments and repeat within one: the order of their sums
    # shows in the bits
    legs = [rng.integers(0, 12, 15) for _ in range(5)]
    merge = provenance.Merge()
    qty, attrs = rng.random(12) * 10, rng.random((12, 8))
    for tick in range(4):
        shipments = []
        for rows in legs[: 2 + tick % 3]:  # combinations of the same arrays recur
            tonnes = 10.0 ** rng.uniform(-3, 3, len(rows))
            tonnes[rng.random(len(rows)) < 0.2] = 0.0  # rows of a leg sent nothing
            shipments.append((rows, tonnes, tonnes[:, None] * rng.random((len(rows), 8))))
        expected_qty, expected_attrs = qty.copy(), attrs.copy()
        rows, tonnes, mass = (np.concatenate(parts) for parts in zip(*shipments, strict=True))
        provenance.mix_into(expected_qty, expected_attrs, rows, tonnes, mass)
        arrived = merge.mix_into(qty, attrs, shipments)
        np.testing.assert_array_equal(qty, expected_qty)
        np.testing.assert_array_equal(attrs, expected_attrs)
        np.testing.assert_array_equal(arrived, np.unique(rows[tonnes > 0]))
    assert len(merge._plans) == 3  # one grouping per combination of row arrays


def test_shipments_in_transit_add_up_and_rows_sent_nothing_carry_nothing():
    model = RareEarthModel(CONFIGS / "baseline.yaml", rng=4)
    w = model.world
    for _ in range(15):
        model.step()
        np.testing.assert_allclose(model.in_transit_t, w.transit_t.sum(axis=0), **TOL)
        for slot, shipments in enumerate(w.transit_attr_t):
            mass = np.zeros((len(w.stocks.qty_t), w.layout.width))
            for rows, shipped_qty, shipped in shipments:
                assert np.all(shipped_qty >= 0)
                assert not shipped[shipped_qty == 0].any()  # a row of a leg sent nothing
                mass[rows] += shipped
            # the attribute mass of what is on its way is its tonnes times shares summing to 1
            origin = mass[:, : w.layout.n_origin].sum(axis=1)
            np.testing.assert_allclose(origin, w.transit_t[slot], rtol=1e-9, atol=1e-6)
    assert w.transit_t.sum() > 0  # the baseline ships across regions: something is on its way


# ------------------------------------------------------------------ sparse network


@pytest.mark.parametrize(("n", "k"), [(50, 20), (30, 20), (1000, 5)])
def test_drawn_suppliers_are_distinct_sorted_and_uniform(n, k):
    rng = np.random.default_rng(5)
    drawn = _draw_distinct(4000, n, k, rng)
    assert drawn.shape == (4000, k)
    assert np.all(np.diff(drawn, axis=1) > 0) and drawn.min() >= 0 and drawn.max() < n
    counts = np.bincount(drawn.ravel(), minlength=n)
    expected = 4000 * k / n
    # each seller is drawn Binomial(4000, k/n) times: 6 standard deviations cover every one
    assert np.all(np.abs(counts - expected) < 6 * np.sqrt(expected * (1 - k / n)) + 1)


def test_sparse_network_links_each_buyer_to_k_sellers_reproducibly():
    scenario = load_scenario(CONFIGS / "strategic_reserve.yaml", ["network.suppliers_per_buyer=2"])
    model = RareEarthModel(scenario, rng=6)
    e, s = model.world.edges, model.world.stocks
    for edges in e.market_slices:
        buyers, sellers = e.buyer[edges], e.seller[edges]
        assert np.all(np.diff(buyers) >= 0)  # sorted by buyer, as clearing expects
        producers = s.owner_kind[sellers] != RESERVE
        n_producers = len(np.unique(sellers[producers]))
        for b in np.unique(buyers):
            mine = buyers == b
            assert len(np.unique(sellers[mine])) == mine.sum()  # no duplicate links
            assert (mine & producers).sum() <= 2
            assert (mine & producers).sum() == min(2, n_producers) or n_producers == 0
    reserve = model.world.reserve_rows
    if reserve is not None:
        sold = e.product == s.product[reserve[1]]
        assert set(e.buyer[sold & (e.seller == reserve[1])]) >= set(e.buyer[sold]) - {reserve[0]}
    again = RareEarthModel(scenario, rng=6).world.edges
    np.testing.assert_array_equal(again.seller, e.seller)
    other = RareEarthModel(scenario, rng=7).world.edges
    assert not np.array_equal(other.seller, e.seller)


def test_dense_network_is_unchanged_by_the_option():
    model = RareEarthModel(CONFIGS / "tests" / "small.yaml", rng=0)
    e, s = model.world.edges, model.world.stocks
    for p, edges in enumerate(e.market_slices):
        sellers = np.flatnonzero((s.product == p) & (s.role == 0))
        buyers = np.flatnonzero((s.product == p) & (s.role == 1))
        assert edges.stop - edges.start <= len(sellers) * len(buyers)
        assert set(e.buyer[edges]) == set(buyers) or len(sellers) == 0


def test_network_graph_is_built_on_first_use_with_every_link():
    model = RareEarthModel(CONFIGS / "tests" / "small.yaml", rng=0)
    assert model._graph is None
    graph = model.network
    assert graph.number_of_edges() == len(model.world.edges.seller)
    assert graph.number_of_nodes() == len(model.producer_agents) + len(model.buyer_agents)


# ------------------------------------------------------------------ metrics


def _price_reference(model, product, kind):
    """The price metric edge by edge: every trade of the kind, volume-weighted."""
    w, e, s = model.world, model.world.edges, model.world.stocks
    seller_cn = s.country[e.seller] == w.china
    buyer_cn = s.country[e.buyer] == w.china
    chosen = {
        "world": np.ones(len(e.seller), bool),
        "cn_domestic": seller_cn & buyer_cn,
        "export_fob": seller_cn & ~buyer_cn,
        "alliance_landed": w.country_bloc[s.country[e.buyer]] == BLOCS.index("alliance"),
        "compliant": model.compliant_rows(e.seller),
    }[kind] & (e.product == product)
    price = {
        "alliance_landed": model.edge_landed,
        "export_fob": model.edge_ask * (1.0 + e.duty),
    }.get(kind, model.edge_ask)
    volume = e.flow_t[e.product == product].sum()
    traded = e.flow_t[chosen].sum()
    if traded <= metrics.NEGLIGIBLE_SHARE * volume:
        return float("nan")
    return float((price[chosen] * e.flow_t[chosen]).sum() / traded)


@pytest.mark.parametrize("scenario", ["baseline", "export_controls_2025"])
def test_price_table_matches_the_edge_by_edge_definition(scenario):
    model = RareEarthModel(CONFIGS / f"{scenario}.yaml", rng=1)
    for _ in range(6):
        model.step()
        for p in range(len(model.world.products)):
            for kind in ("world", "cn_domestic", "export_fob", "alliance_landed", "compliant"):
                np.testing.assert_allclose(
                    metrics.price(model, p, kind), _price_reference(model, p, kind), **TOL
                )


def _by_country(attrs: np.ndarray, layout: Layout) -> np.ndarray:
    """A lot's provenance as (mining country × separation country or unprocessed), cell by cell."""
    n = layout.n_countries
    out = np.zeros((n, n + 1))
    for cell in np.flatnonzero(attrs[: layout.n_origin]):
        mined, separated = layout.origin_pair(int(cell))
        out[mined, n if separated is None else separated] += attrs[cell]
    return out


def test_dependency_and_consumption_origin_match_buyer_by_buyer_sums():
    model = RareEarthModel(CONFIGS / "baseline.yaml", rng=2)
    for _ in range(4):
        model.step()
    w, b = model.world, model.world.buyers
    weight = w.reference_price[b.product]
    for bloc in range(len(BLOCS)):
        mine = np.flatnonzero(w.country_bloc[b.country] == bloc)
        consumed = sum(weight[i] * b.consumed_t[i] for i in mine)
        origin = [_by_country(model.consumed_attr_t[i], w.layout) for i in mine]
        separated = sum(weight[i] * o[:, w.china].sum() for i, o in zip(mine, origin, strict=True))
        if consumed > 0:
            np.testing.assert_allclose(
                metrics.dependency(model, bloc, "separated"), separated / consumed, **TOL
            )
    record = metrics.consumption_record(model)
    cube = defaultdict(float)
    for i in range(len(b.names)):
        origin = _by_country(model.consumed_attr_t[i], w.layout)
        for mine_c, sep_c in zip(*np.nonzero(origin > 0), strict=True):
            key = (int(b.product[i]), int(w.country_bloc[b.country[i]]), int(mine_c), int(sep_c))
            cube[key] += origin[mine_c, sep_c]
    cells = zip(
        record["product"], record["bloc"], record["mine"], record["separation"], strict=True
    )
    got = {tuple(int(i) for i in cell): t for cell, t in zip(cells, record["t"], strict=True)}
    assert set(got) == {k for k, v in cube.items() if v > 0}
    np.testing.assert_allclose([got[k] for k in got], [cube[k] for k in got], **TOL)


def test_capacity_and_profit_tables_match_producer_by_producer_sums():
    model = RareEarthModel(CONFIGS / "full_alliance.yaml", rng=0)
    for _ in range(13):  # past the first investment tick
        model.step()
    p, w = model.world.producers, model.world
    built = np.isin(p.status, (OPERATING, IDLE))
    for stage in range(3):
        for bloc in range(len(BLOCS)):
            mine = [
                i
                for i in range(len(p.names))
                if p.stage[i] == stage and w.country_bloc[p.country[i]] == bloc
            ]
            capacity = sum(p.capacity_t_per_yr[i] for i in mine if built[i])
            profit = sum(model.tick_profit[i] for i in mine)
            np.testing.assert_allclose(metrics.capacity(model, stage, bloc), capacity, **TOL)
            np.testing.assert_allclose(metrics.profit(model, stage, bloc), profit, **TOL)


# ------------------------------------------------------------------ margins and offers


def test_margins_of_some_producers_equal_those_of_all_producers():
    from abm.agents import Producer

    model = RareEarthModel(load_scenario(CONFIGS / "baseline.yaml"), rng=2)
    rng = np.random.default_rng(0)
    n = len(model.world.producers.names)
    for _ in range(30):
        model.step()
        some = rng.choice(n, size=rng.integers(1, n), replace=False)
        for market_view in (False, True):
            every = Producer.unit_margin(model, market_view)
            np.testing.assert_array_equal(
                Producer.unit_margin(model, market_view, producers=some), every[some]
            )


def test_shipments_in_transit_hold_the_tonnes_booked_for_their_arrival():
    # the lots listed for each arrival slot (per shipping leg) hold the tonnes booked for it
    model = RareEarthModel(synthetic_scenario(300, suppliers_per_buyer=5), rng=4)
    w = model.world
    assert max(ticks for m in model._markets for ticks, _, _ in (m.legs or [])) >= 2
    for _ in range(12):
        model.step()
        for slot, shipments in enumerate(w.transit_attr_t):
            booked = np.zeros(len(w.stocks.qty_t))
            for rows, qty, mass in shipments:
                np.add.at(booked, rows, qty)
                # a lot's provenance shares sum to 1, so its attribute mass to its tonnes
                origin = mass[:, : w.layout.n_origin].sum(axis=1)
                np.testing.assert_allclose(origin, qty, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(booked, w.transit_t[slot], rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("config", ["baseline", "strategic_reserve", "export_controls_2025"])
def test_the_narrow_provenance_table_gives_the_results_of_the_full_grid(config, monkeypatch):
    """The layout keeps only the provenance cells material can reach (abm.world): a world
    built with every (mining × separation) cell runs the same, flow for flow."""
    import abm.world

    def run(model: RareEarthModel) -> tuple:
        for _ in range(36):
            model.step()
        frame = model.datacollector.get_model_vars_dataframe().reset_index(drop=True)
        origin = provenance.origin_matrix(model.world.stocks.attrs, model.world.layout)
        return model, frame, model.flows_frame(), origin

    narrow, narrow_frame, narrow_flows, narrow_origin = run(
        RareEarthModel(CONFIGS / f"{config}.yaml", rng=3)
    )
    monkeypatch.setattr(abm.world, "_reachable_cells", lambda *args: None)
    full, full_frame, full_flows, full_origin = run(
        RareEarthModel(CONFIGS / f"{config}.yaml", rng=3)
    )
    assert narrow.world.layout.width < full.world.layout.width
    pd.testing.assert_frame_equal(narrow_flows, full_flows, check_exact=True)
    np.testing.assert_array_equal(narrow.world.stocks.qty_t, full.world.stocks.qty_t)
    np.testing.assert_array_equal(narrow_origin, full_origin)
    # shares summed over fewer zero cells may round differently in the last bit
    pd.testing.assert_frame_equal(narrow_frame, full_frame, check_exact=False, rtol=0, atol=1e-15)
