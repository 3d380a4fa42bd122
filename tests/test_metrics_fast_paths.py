"""Per-tick tables of the metrics and the fused invariant check, against the plain code.

The metrics read tables computed once per tick over groupings built once per world, and the
invariant check first judges the whole state in a few fused passes. Both must change nothing:

- every metric equals, bit for bit, its plain per-metric definition (each metric computed on
  its own from the model's arrays, as before the tables): the same values are summed in the
  same order, so the tolerance is zero — a difference in the last bit would shift trajectories
  that feed on these numbers (the shortage the reserve reacts to, for one);
- what the collector stored (tables cached across the tick) equals a fresh computation;
- the invariant check raises exactly when, and with exactly the message with which, the
  agent-by-agent check does.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from abm import RareEarthModel, invariants, metrics, provenance, threads
from abm.invariants import InvariantError
from abm.scenario import build_scenario
from abm.world import BLOCS, IDLE, MINE, OPERATING, PROCESSOR
from benchmarks.synthetic import synthetic_scenario
from tests.test_robustness import tiny_world
from tests.worlds import CONFIGS

PRICE_KINDS = ("world", "cn_domestic", "export_fob", "alliance_landed", "compliant")
DEPENDENCY_KINDS = ("processed", "route", "separated", "mined")

# ------------------------------------------------------------------ plain definitions


def plain_by_product(model, per_edge):
    """Per product: sum over its market's edges (markets tile the edges in product order)."""
    markets = model.world.edges.market_slices
    out = np.zeros(len(markets))
    filled = [p for p, m in enumerate(markets) if m.stop > m.start]
    if filled:
        out[filled] = np.add.reduceat(per_edge, [markets[p].start for p in filled])
    return out


def plain_price(model, product, kind):
    w, e = model.world, model.world.edges
    seller_cn, buyer_cn = e.seller_country == w.china, e.buyer_country == w.china
    mask = {
        "world": True,
        "cn_domestic": seller_cn & buyer_cn,
        "export_fob": seller_cn & ~buyer_cn,
        "alliance_landed": w.country_bloc[e.buyer_country] == BLOCS.index("alliance"),
        "compliant": model.compliant_rows(e.seller),
    }[kind]
    prices = {
        "alliance_landed": model.edge_landed,
        "export_fob": model.edge_ask * (1.0 + e.duty),
    }.get(kind, model.edge_ask)
    flow = e.flow_t
    selected = flow if mask is True else flow * mask
    volume = plain_by_product(model, flow)[product]
    traded = plain_by_product(model, selected)[product]
    value = plain_by_product(model, selected * prices)[product]
    return float(value / traded) if traded > metrics.NEGLIGIBLE_SHARE * volume else np.nan


def plain_dependency(model, bloc, kind):
    w, b = model.world, model.world.buyers
    in_bloc = w.country_bloc[b.country]
    weight = w.reference_price[b.product]
    mass = model.consumed_attr_t
    tonnes = {
        "processed": mass[:, w.layout.processed_cn],
        "route": mass[:, w.layout.touched_cn],
        "separated": provenance.separated_in(mass, w.layout, w.china),
        "mined": provenance.mined_in(mass, w.layout, w.china),
    }[kind]
    total = np.bincount(in_bloc, weight * b.consumed_t, minlength=len(BLOCS))[bloc]
    linked = np.bincount(in_bloc, weight * tonnes, minlength=len(BLOCS))[bloc]
    return float(linked / total) if total > 0 else np.nan


def plain_output_by_country(model, stage):
    p = model.world.producers
    in_stage = p.stage == stage
    out = p.output_t[in_stage] * (model.world.reo_content[-1] if stage == 2 else 1.0)
    return np.bincount(p.country[in_stage], out, minlength=model.world.layout.n_countries)


def plain_china_share(model, stage):
    by_country = plain_output_by_country(model, stage)
    total = by_country.sum()
    return float(by_country[model.world.china] / total) if total > 0 else np.nan


def plain_hhi(model, stage):
    by_country = plain_output_by_country(model, stage)
    total = by_country.sum()
    return float(((100 * by_country / total) ** 2).sum()) if total > 0 else np.nan


def plain_stage_bloc(model, stage, bloc):
    p, w = model.world.producers, model.world
    cell = p.stage * len(BLOCS) + w.country_bloc[p.country]
    built = (p.status == OPERATING) | (p.status == IDLE)
    n = len(metrics.STAGES) * len(BLOCS)
    at = stage * len(BLOCS) + bloc
    capacity = np.bincount(cell, p.capacity_t_per_yr * built, n)[at]
    profit = np.bincount(cell, model.tick_profit, n)[at]
    return float(capacity), float(profit)


def plain_utilisation(model, stage):
    p = model.world.producers
    mask = p.stage == stage
    cap = model.effective_capacity[mask].sum()
    return float(p.output_t[mask].sum() / cap) if cap > 0 else np.nan


def plain_active_producers(model, stage):
    p = model.world.producers
    return float(((p.stage == stage) & (p.status == OPERATING)).sum())


def plain_shortage(model, bloc, product=None):
    w, b = model.world, model.world.buyers
    mine = w.country_bloc[b.country] == bloc
    if product is not None:
        mine &= b.product == product
    weight = w.reference_price[b.product][mine]
    need = (weight * b.need_t[mine]).sum()
    got = (weight * b.consumed_t[mine]).sum()
    return float(1 - got / need) if need > 0 else np.nan


def plain_seller_stock(model, product):
    s = model.world.stocks
    producer = (s.owner_kind == MINE) | (s.owner_kind == PROCESSOR)
    return float(s.qty_t[(s.product == product) & producer & (s.role == 0)].sum())


def plain_consumption_record(model):
    w, b = model.world, model.world.buyers
    n = w.layout.n_countries
    origin = provenance.origin_matrix(model.consumed_attr_t, w.layout)
    group = b.product * len(BLOCS) + w.country_bloc[b.country]
    cube = np.zeros((len(w.products) * len(BLOCS), n, n + 1))
    groups, origin_by_group = provenance.sum_by(group, origin)
    cube[groups] = origin_by_group
    cell, mine, sep = np.nonzero(cube > 0)
    return {
        "product": cell // len(BLOCS),
        "bloc": cell % len(BLOCS),
        "mine": mine,
        "separation": sep,
        "t": cube[cell, mine, sep],
    }


def plain_values(model):
    """Every metric with a plain definition, keyed by (function, arguments)."""
    n_products = len(model.world.products)
    values = {}
    for p, kind in itertools.product(range(n_products), PRICE_KINDS):
        values["price", p, kind] = plain_price(model, p, kind)
    for bloc, kind in itertools.product(range(len(BLOCS)), DEPENDENCY_KINDS):
        values["dependency", bloc, kind] = plain_dependency(model, bloc, kind)
    for stage in range(len(metrics.STAGES)):
        values["china_share", stage] = plain_china_share(model, stage)
        values["hhi", stage] = plain_hhi(model, stage)
        values["utilisation", stage] = plain_utilisation(model, stage)
        values["active_producers", stage] = plain_active_producers(model, stage)
        for bloc in range(len(BLOCS)):
            values["capacity", stage, bloc], values["profit", stage, bloc] = plain_stage_bloc(
                model, stage, bloc
            )
    for bloc, product in itertools.product(range(len(BLOCS)), [None, *range(n_products)]):
        values["shortage", bloc, product] = plain_shortage(model, bloc, product)
    for p in range(n_products):
        values["seller_stock", p] = plain_seller_stock(model, p)
    return values


def table_values(model):
    """The same metrics through ``abm.metrics`` (its per-tick tables)."""
    return {key: getattr(metrics, key[0])(model, *key[1:]) for key in plain_values(model)}


def assert_identical(got, expected):
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert type(got[key]) is type(value), key
        np.testing.assert_array_equal(got[key], value, err_msg=str(key))  # NaN equals NaN


# ------------------------------------------------------------------ metrics

WORLDS = {
    "baseline": lambda: RareEarthModel(CONFIGS / "baseline.yaml", rng=1),
    "export_controls_2025": lambda: RareEarthModel(CONFIGS / "export_controls_2025.yaml", rng=1),
    "strategic_reserve": lambda: RareEarthModel(CONFIGS / "strategic_reserve.yaml", rng=2),
    "synthetic": lambda: RareEarthModel(synthetic_scenario(600, suppliers_per_buyer=5), rng=0),
}


@pytest.mark.parametrize("world", WORLDS)
def test_metric_tables_equal_the_plain_definitions_bit_for_bit(world):
    model = WORLDS[world]()
    for tick in range(14):  # past the first investment tick (capacity, closures)
        if tick:
            model.step()
        assert_identical(table_values(model), plain_values(model))
        record, plain = metrics.consumption_record(model), plain_consumption_record(model)
        for column in plain:
            np.testing.assert_array_equal(record[column], plain[column])


@pytest.mark.parametrize("world", ["baseline", "strategic_reserve"])
def test_collected_metrics_equal_a_fresh_computation_every_tick(world):
    """Tables cached across a tick (shortage is read by ``_settle`` before collection) and the
    tick-0 row after warm-up (the warm-up's last tick is tick 0 too) are never stale."""
    model = WORLDS[world]()
    reporters = metrics.reporters(model)
    for tick in range(8):
        if tick:
            model.step()
        collected = model.datacollector.get_model_vars_dataframe().iloc[-1]
        model._metrics_tables = None  # forget this tick's tables
        fresh = {name: reporter(model) for name, reporter in reporters.items()}
        np.testing.assert_array_equal(collected[list(fresh)].to_numpy(float), list(fresh.values()))


def test_groupings_follow_a_change_of_blocs():
    model = WORLDS["baseline"]()
    w = model.world
    before = metrics._groups(model)
    joining = int(np.flatnonzero(w.country_bloc == BLOCS.index("other"))[0])
    w.country_bloc = w.country_bloc.copy()
    w.country_bloc[joining] = BLOCS.index("alliance")
    model._metrics_tables = None  # a new tick
    after = metrics._groups(model)
    assert after is not before
    joined = w.edges.buyer_country == joining
    assert after.alliance_buyer[joined].all() and not before.alliance_buyer[joined].any()
    assert_identical(table_values(model), plain_values(model))


@pytest.mark.parametrize("shape", [(), (5,), (3, 4)])
def test_group_matrix_sums_exactly_like_sum_by(shape):
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 9, 300)
    values = rng.random((300, *shape)) * 10.0 ** rng.integers(-6, 6, (300, *shape))
    unique, sums = provenance.sum_by(keys, values)
    cells, members = provenance.group_matrix(keys)
    np.testing.assert_array_equal(cells, unique)
    if values.ndim > 1:  # one value per lot is summed by reduceat, not the matrix
        product = (members @ values.reshape(300, -1)).reshape(sums.shape)
        np.testing.assert_array_equal(product, sums)


def test_logged_flows_carry_the_sellers_touched_share():
    model = WORLDS["baseline"]()
    model.step()
    entry, e = model.flow_log[-1], model.world.edges
    attrs, touched = model.world.stocks.attrs, model.world.layout.touched_cn
    np.testing.assert_array_equal(entry["touched_cn_by_row"], attrs[:, touched])
    frame = model.flows_frame()
    np.testing.assert_array_equal(
        frame["touched_cn_share"], attrs[e.seller[entry["edge"]], touched]
    )


# ------------------------------------------------------------------ invariants


def outcome(check, model) -> str | None:
    """The message an invariant check raises, or None."""
    try:
        check(model)
    except InvariantError as err:
        return str(err)
    return None


def perturbations(model):
    """(what, array, index, value): single broken or barely sound values of every quantity
    the check covers, including values on either side of each tolerance."""
    w, s, p, b = model.world, model.world.stocks, model.world.producers, model.world.buyers
    out_row = int(np.flatnonzero((s.role == 0) & (s.qty_t > 0))[0])
    in_row = int(np.flatnonzero(s.role == 1)[0])
    held = int(np.flatnonzero(s.qty_t > 0)[-1])
    lowest = invariants.NEGATIVE_TOLERANCE * max(float(np.abs(s.qty_t).sum()), 1.0)
    tol = invariants.SHARE_TOLERANCE
    bad = [np.nan, np.inf, -np.inf]
    for value in [*bad, -1.0, -0.5 * lowest, -2 * lowest, 0.0, 1e300]:
        yield "qty", s.qty_t, out_row, value
        yield "transit", w.transit_t, (len(w.transit_t) - 1, held), value
        yield "output", p.output_t, 0, value
    for value in [*bad, -1.0, 0.0, 1e-300]:
        yield "ask", s.ask_usd_per_kg, out_row, value
        yield "ask of a buying row", s.ask_usd_per_kg, in_row, value
        yield "export ask", s.export_ask_usd_per_kg, out_row, value
        yield "expected price", s.expected_price_usd_per_kg, in_row, value
        yield "capacity", p.capacity_t_per_yr, 0, value
        yield "pending capacity", p.pending_capacity_t_per_yr, len(p.names) - 1, value
        yield "need", b.need_t, 0, value
        yield "producer cash", p.cash_usd_million, 0, value
        yield "buyer cash", b.cash_usd_million, len(b.names) - 1, value
    for value in [*bad, -2 * tol, -0.5 * tol, 1 + 0.5 * tol, 1 + 2 * tol]:
        yield "touched share", s.attrs, (held, w.layout.touched_cn), value
        yield "provenance share", s.attrs, (held, 0), value
    provenance_block = (held, slice(0, w.layout.n_origin))
    composition = (held, w.layout.composition)
    for factor in [0.5, 1 - 2 * tol, 1 - 0.999 * tol, 1 - 0.5 * tol, 1 + tol, 1 + 1.001 * tol]:
        yield "provenance sum", s.attrs, provenance_block, s.attrs[provenance_block] * factor
        yield "composition sum", s.attrs, composition, s.attrs[composition] * factor


def balance_breaks(model):
    """(what, setter, restore): the world's balances, broken or barely sound."""
    moved = model.mined_t_total + model.initial_reo_t
    mined, tariff = model.mined_t_total, model.accounts["tariff_revenue"]
    for extra in [50.0, 1e-3 * moved, 1e-9 * moved, np.nan]:
        yield (
            "mass",
            lambda x=extra: setattr(model, "mined_t_total", mined + x),
            lambda: setattr(model, "mined_t_total", mined),
        )
    for amount in [1e3, 1e-12, np.inf]:
        yield (
            "money",
            lambda x=amount: model.accounts.__setitem__("tariff_revenue", tariff + x),
            lambda: model.accounts.__setitem__("tariff_revenue", tariff),
        )
    cash = model.reserve.cash_usd_million
    yield (
        "reserve cash",
        lambda: setattr(model.reserve, "cash_usd_million", np.nan),
        lambda: setattr(model.reserve, "cash_usd_million", cash),
    )


INVARIANT_WORLDS = {
    "tiny": lambda: RareEarthModel(build_scenario(tiny_world(magnet=True)), rng=0),
    "baseline": lambda: RareEarthModel(CONFIGS / "baseline.yaml", rng=0),
    "strategic_reserve": lambda: RareEarthModel(CONFIGS / "strategic_reserve.yaml", rng=0),
}


@pytest.mark.parametrize(
    "world,chunked", [(world, False) for world in INVARIANT_WORLDS] + [("baseline", True)]
)
def test_invariant_check_raises_like_the_agent_by_agent_check(world, chunked, monkeypatch):
    """``chunked``: the attributes are judged a few rows at a time on two threads, as a
    firm-level world's are (a broken row in any chunk, first or last, is found)."""
    model = INVARIANT_WORLDS[world]()
    for _ in range(3):
        model.step()
    if chunked:
        monkeypatch.setattr(provenance, "CHUNK_CELLS", 3 * model.world.layout.width)
        monkeypatch.setattr(threads, "MIN_CELLS", 20 * model.world.layout.width)
        monkeypatch.setenv(threads.ENV, "2")
        cells = len(model.world.stocks.qty_t) * model.world.layout.width
        assert threads.n_threads(cells) == 2 and threads.n_blocks(cells) == 2 * threads.PIECES
    assert outcome(invariants.check, model) is None
    raised = 0
    for what, array, index, value in perturbations(model):
        kept = np.copy(array[index])
        array[index] = value
        expected = outcome(invariants._locate, model)
        assert outcome(invariants.check, model) == expected, (what, value)
        raised += expected is not None
        array[index] = kept
    for what, breaks, restore in balance_breaks(model):
        breaks()
        expected = outcome(invariants._locate, model)
        assert outcome(invariants.check, model) == expected, what
        raised += expected is not None
        restore()
    assert outcome(invariants.check, model) is None  # restored whole
    assert raised > 60  # most perturbations break an invariant: the comparison is not vacuous


def test_the_collector_keeps_what_mesas_collector_keeps_and_every_metric_is_a_float():
    import mesa
    import pandas as pd

    model = WORLDS["baseline"]()
    plain = mesa.DataCollector(model_reporters=metrics.reporters(model))
    plain.collect(model)
    for _ in range(5):
        model.step()
        plain.collect(model)
        assert all(isinstance(r(model), float) for r in metrics.reporters(model).values())
    ours = model.datacollector.get_model_vars_dataframe().iloc[-6:].reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, plain.get_model_vars_dataframe())


def named_values(model):
    """Every metric by name, each from the function (or model attribute) it reports."""
    w, values = model.world, {}
    for p, product in enumerate(w.products):
        tag = metrics.slug(product)
        for kind in PRICE_KINDS:
            values[f"price_{kind}_{tag}"] = metrics.price(model, p, kind)
        values[f"two_tier_spread_{tag}"] = metrics.two_tier_spread(model, p)
        values[f"seller_stock_t_{tag}"] = metrics.seller_stock(model, p)
    for b, bloc in enumerate(BLOCS):
        for kind in DEPENDENCY_KINDS:
            values[f"dependency_{kind}_cn_{bloc}"] = metrics.dependency(model, b, kind)
        values[f"shortage_{bloc}"] = metrics.shortage(model, b)
        values[f"fill_rate_{bloc}"] = 1 - metrics.shortage(model, b)
        for p, product in enumerate(w.products[1:], start=1):
            values[f"shortage_{bloc}_{metrics.slug(product)}"] = metrics.shortage(model, b, p)
    for st, stage in enumerate(metrics.STAGES):
        values[f"cn_share_{stage}"] = metrics.china_share(model, st)
        values[f"hhi_{stage}"] = metrics.hhi(model, st)
        values[f"utilisation_{stage}"] = metrics.utilisation(model, st)
        values[f"active_producers_{stage}"] = metrics.active_producers(model, st)
        for b, bloc in enumerate(BLOCS):
            values[f"capacity_{stage}_{bloc}"] = metrics.capacity(model, st, b)
            values[f"profit_{stage}_{bloc}"] = metrics.profit(model, st, b)
    fiscal = ["tariff_revenue", "duty_revenue", "levy_revenue", "floor_subsidy", "floor_upside"]
    fiscal += ["strategic_pricing", "offtake_purchases", "reserve_carrying_cost"]
    for key in fiscal:
        values[f"{key}_usd_million"] = model.tick_fiscal[key]
    status = w.producers.status
    values |= {
        "reserve_stock_t": model.reserve.stock_t,
        "reserve_spend_usd_million": float(model.tick_out[-1]),
        "reserve_release_t": model.reserve.tick_released_t,
        "buyers_landed_cost_usd_million": float(model.tick_buyer_spend.sum()),
        "entries_total": float(model.entries_total),
        "exits_total": float(model.exits_total),
        "projects_under_construction": float((status == 1).sum()),
        "projects_planned": float((status == metrics.PLANNED).sum()),
        "closed_producers": float((status == metrics.CLOSED).sum()),
        "mass_balance_error_t": model.mass_balance_error_t(),
        "money_balance_error_usd_million": model.money_balance_error_usd_million(),
    }
    return values


@pytest.mark.parametrize("world", ["export_controls_2025", "strategic_reserve"])
def test_each_collected_column_is_the_metric_it_names(world):
    """The collector takes metrics a family at a time: each value lands in its own column."""
    model = WORLDS[world]()
    for _ in range(14):
        model.step()
        collected = model.datacollector.get_model_vars_dataframe().iloc[-1]
        expected = named_values(model)
        assert set(expected) <= set(collected.index)
        assert set(collected.index) - set(expected) == {"reserve_value_usd_million"}
        for name, value in expected.items():
            np.testing.assert_array_equal(collected[name], value, err_msg=name)


def test_reporters_a_user_adds_or_leaves_out_are_collected_one_by_one():
    model = WORLDS["baseline"]()
    chosen = dict(list(metrics.reporters(model).items())[3:])  # a family with members left out
    chosen["ticks_seen"] = lambda m: float(m.tick)  # a reporter of the user's own
    model.datacollector = metrics.Collector(model_reporters=chosen)
    for _ in range(4):
        model.step()
    frame = model.datacollector.get_model_vars_dataframe()
    assert frame["ticks_seen"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert "price_world_concentrate" not in frame
    model._metrics_tables = None
    expected = named_values(model)
    for name in frame.columns.drop("ticks_seen"):
        if name in expected:
            np.testing.assert_array_equal(frame[name].iloc[-1], expected[name], err_msg=name)
