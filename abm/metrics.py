"""Every metric of MODEL.md §10, defined once: name, unit, meaning and how it is computed.

A metric is a function of the model after a tick. The registry :data:`METRICS` serves Mesa's
``DataCollector`` (:func:`reporters`), the CLI's tables, the glossary in the docs
(:func:`glossary_markdown`) and, later, sweeps and notebooks. Names depend on the scenario's
products (``oxide:NdPr`` appears as ``oxide_NdPr``), blocs and stages.

Undefined values are NaN, not zero: a price with no trade behind it this tick (e.g. the
export FOB price when China exports nothing) is NaN.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import accumulate
from typing import TYPE_CHECKING, Any

import mesa
import numpy as np
import pandas as pd
import pyarrow as pa

from abm import market, provenance
from abm.world import (
    BLOCS,
    CLOSED,
    CONSTRUCTION,
    IDLE,
    MINE,
    OPERATING,
    OUTPUT,
    PLANNED,
    PROCESSOR,
)

if TYPE_CHECKING:
    from abm.model import RareEarthModel

STAGES = ("mining", "separation", "magnets")
NEGLIGIBLE_SHARE = 1e-9  # of a product's traded volume in a tick


@dataclass(frozen=True)
class Metric:
    """One collected quantity."""

    name: str
    unit: str
    meaning: str
    compute: Callable[[RareEarthModel], float]


def slug(product: str) -> str:
    """Column-safe product name: ``oxide:NdPr`` → ``oxide_NdPr``."""
    return product.replace(":", "_")


# ------------------------------------------------------------------ per-tick tables
#
# A metric reads a table computed once per tick (all products or blocs at once) and shared by
# every metric of the table; the groupings behind the tables (which edges are Chinese exports,
# which buyers are in a bloc) are fixed for a world and built once. Both give bit for bit the
# numbers of the plain definitions: the same values are summed in the same order.


@dataclass
class _Groups:
    """Who belongs to which group, per edge, buyer, producer and stock row (fixed per world)."""

    key: tuple[Any, ...]  # what they were built from: the world, its blocs, reference prices
    # per edge: the trades of each kind of price (besides "world" and "compliant"), as 1.0 or
    # 0.0 (a float mask multiplies a float array twice as fast as a boolean one, to the bit)
    cn_domestic: np.ndarray
    export_fob: np.ndarray
    alliance_buyer: np.ndarray
    market_starts: np.ndarray  # per product with edges: its first edge
    has_edges: np.ndarray  # per product: it has edges (markets tile the edges in order)
    edge_work: np.ndarray  # (selected tonnes, value) × edge: scratch for the price table
    # per buyer
    value_weight: np.ndarray  # a tonne consumed at its product's reference price
    buyer_kind_bloc: np.ndarray  # per dependency kind × buyer: cell kind × bloc
    # the buyers in two orders, by bloc and by bloc × product (each in buyer order), and where
    # each (bloc, product or None for all products) runs in them: a shortage sums one run
    shortage_runs: list[tuple[np.ndarray, dict[tuple[int, int | None], slice]]]
    consumption_routes: provenance.Routes  # per buyer to its (product × bloc) cell (``dest``)
    consumption_ones: np.ndarray  # per buyer: 1.0, what each buyer's row counts for
    # per producer
    stage_producers: list[np.ndarray]  # per stage: its producers
    stage_country: np.ndarray  # stage × country cell
    stage_bloc: np.ndarray  # stage × bloc cell
    # per product: the producers' output rows (sellers' stock)
    seller_rows: list[np.ndarray]


def _groups(model: RareEarthModel) -> _Groups:
    """The world's groupings, rebuilt only when the world or its blocs change."""
    return _table(model, "groups", _current_groups)


def _current_groups(model: RareEarthModel) -> _Groups:
    w = model.world
    key = (id(w), w.country_bloc.tobytes(), w.reference_price.tobytes())
    cached = getattr(model, "_metrics_groups", None)
    if cached is None or cached.key != key:
        cached = model._metrics_groups = _build_groups(model, key)
    return cached


def _build_groups(model: RareEarthModel, key: tuple[Any, ...]) -> _Groups:
    w = model.world
    e, b, p, s = w.edges, w.buyers, w.producers, w.stocks
    n_blocs, n_products, n_countries = len(BLOCS), len(w.products), w.layout.n_countries
    seller_cn, buyer_cn = e.seller_country == w.china, e.buyer_country == w.china  # per edge
    markets = e.market_slices  # per product: its contiguous edges
    buyer_bloc = w.country_bloc[b.country]  # per buyer
    buyer_group = b.product * n_blocs + buyer_bloc  # per buyer
    buyers = np.arange(len(buyer_group))
    producer_row = (s.owner_kind == MINE) | (s.owner_kind == PROCESSOR)  # per stock row
    return _Groups(
        key=key,
        cn_domestic=(seller_cn & buyer_cn).astype(float),
        export_fob=(seller_cn & ~buyer_cn).astype(float),
        alliance_buyer=(w.country_bloc[e.buyer_country] == BLOCS.index("alliance")).astype(float),
        market_starts=np.array([m.start for m in markets if m.stop > m.start], dtype=np.intp),
        has_edges=np.array([m.stop > m.start for m in markets], dtype=bool),
        edge_work=np.empty((2, len(e.seller))),
        value_weight=w.reference_price[b.product],
        buyer_kind_bloc=np.arange(len(_DEPENDENCY_KINDS) + 1)[:, None] * n_blocs + buyer_bloc,
        shortage_runs=[
            _runs(buyer_bloc, [(bloc, None) for bloc in range(n_blocs)]),
            _runs(
                buyer_bloc * n_products + b.product,
                [(bloc, product) for bloc in range(n_blocs) for product in range(n_products)],
            ),
        ],
        consumption_routes=provenance.Routes(buyer_group, buyers, len(buyers)),
        consumption_ones=np.ones(len(buyer_group)),
        stage_producers=[np.flatnonzero(p.stage == stage) for stage in range(len(STAGES))],
        stage_country=p.stage * n_countries + p.country,
        stage_bloc=p.stage * n_blocs + w.country_bloc[p.country],
        seller_rows=[
            np.flatnonzero((s.product == product) & producer_row & (s.role == OUTPUT))
            for product in range(n_products)
        ],
    )


def _runs(
    group: np.ndarray, names: list[tuple[int, int | None]]
) -> tuple[np.ndarray, dict[tuple[int, int | None], slice]]:
    """Items sorted by group (in item order within a group) and each named group's run."""
    sizes = np.bincount(group, minlength=len(names)).tolist()  # per group: its items
    stops = accumulate(sizes)
    return np.argsort(group, kind="stable"), {
        name: slice(stop - size, stop) for name, size, stop in zip(names, sizes, stops, strict=True)
    }


def _table(model: RareEarthModel, name: str, compute: Callable[[RareEarthModel], Any]) -> Any:
    """One of this tick's metric tables, computed on first use and kept until the tick ends.

    Keyed by tick, Mesa step and warm-up, so the last warm-up tick (tick 0 too) and the first
    collection after it do not share tables. A table read before collection (``_settle`` reads
    shortage and production) must be computed only from what is final for the tick by then.
    """
    tables = _tick_tables(model)
    if name not in tables:
        tables[name] = compute(model)
    return tables[name]


def open_tables(model: RareEarthModel) -> None:
    """Start this tick's tables and the world's groupings, before threads share them."""
    _groups(model)


def _tick_tables(model: RareEarthModel) -> dict[str, Any]:
    """This tick's metric tables by name (a new, empty set when the tick has moved on)."""
    key = (model.tick, model.steps, model.warming_up)
    cached = getattr(model, "_metrics_tables", None)
    if cached is None or cached[0] != key:
        cached = model._metrics_tables = (key, {})
    return cached[1]


# ------------------------------------------------------------------ prices


def price(model: RareEarthModel, product: int, kind: str) -> float:
    """Volume-weighted price of this tick's trades of one product, by kind of trade.

    Kinds: ``world`` (every trade, at the ask), ``cn_domestic`` (CN sellers to CN buyers),
    ``export_fob`` (CN sellers to non-CN buyers: the ask plus China's export duty, before
    the importer's tariff — a price at the Chinese port), ``alliance_landed``
    (all-in landed cost alliance buyers paid), ``compliant`` (material no CN mine or plant
    touched, at the ask).
    """
    return float(_price_table(model)[kind][product])


def _price_table(model: RareEarthModel) -> dict[str, np.ndarray]:
    """Per kind of trade (see :func:`price`), per product: this tick's price, computed once."""
    return _table(model, "prices", _compute_prices)


def per_product(model: RareEarthModel, per_edge: np.ndarray) -> np.ndarray:
    """Per product: the sum of a per-edge quantity (or of each row of them) over its market."""
    g = _groups(model)
    out = np.zeros((*per_edge.shape[:-1], len(g.has_edges)))
    if len(g.market_starts):  # markets tile the edge list in product order
        out[..., g.has_edges] = np.add.reduceat(per_edge, g.market_starts, axis=-1)
    return out


def world_trade(model: RareEarthModel) -> dict[str, np.ndarray]:
    """This tick's trades at the ask, computed once per tick.

    ``sales`` per edge (t × US$/kg), and per product the ``volume`` traded (t) and its
    ``value`` (the sum of sales): for the market's price expectations and the world price
    metrics alike.
    """
    return _table(model, "world_trade", _compute_world_trade)


def _compute_world_trade(model: RareEarthModel) -> dict[str, np.ndarray]:
    flow = model.world.edges.flow_t
    sales = flow * model.edge_ask  # per edge
    return {"sales": sales, "volume": per_product(model, flow), "value": per_product(model, sales)}


def _compute_prices(model: RareEarthModel) -> dict[str, np.ndarray]:
    g, e = _groups(model), model.world.edges
    flow, ask = e.flow_t, model.edge_ask  # per edge: t, US$/kg
    select = {  # per kind: the trades (per edge; None: all) and the price they count at
        "world": (None, ask),  # every trade: summed once per tick (world_trade)
        "cn_domestic": (g.cn_domestic, ask),
        "export_fob": (g.export_fob, None),  # the ask plus export duty, filled in below
        "alliance_landed": (g.alliance_buyer, model.edge_landed),
        # each seller's compliance, judged once per stock row
        "compliant": (
            model.compliant_rows(np.arange(len(model.world.stocks.qty_t)))[e.seller],
            ask,
        ),
    }
    sums = np.zeros((len(select), 2, len(g.has_edges)))  # per kind: (tonnes, value) × product
    selected, value = work = g.edge_work  # per edge, overwritten kind by kind
    world = world_trade(model)
    sums[0] = world["volume"], world["value"]
    for k, (mask, price) in enumerate(select.values()):
        if mask is None:
            continue  # the world's trades, summed above
        if price is None:  # duty paid: the ask times (1 + duty)
            price = np.multiply(ask, np.add(1.0, e.duty, out=value), out=value)
        np.multiply(flow, mask, out=selected)
        np.multiply(selected, price, out=value)
        sums[k] = per_product(model, work)
    traded, value_usd = sums[:, 0], sums[:, 1]  # per kind × product
    volume = traded[0]  # per product: every trade
    # a trade counts when it is more than a billionth of the product's volume this tick, so
    # vanishing logit tails (underflowing differently at different scales) do not count
    counts = traded > NEGLIGIBLE_SHARE * volume
    prices = np.where(counts, value_usd / np.where(counts, traded, 1.0), np.nan)
    return dict(zip(select, prices, strict=True))


def two_tier_spread(model: RareEarthModel, product: int) -> float:
    """Export FOB minus China domestic price of one product (US$/kg)."""
    return price(model, product, "export_fob") - price(model, product, "cn_domestic")


# ------------------------------------------------------------------ dependency


_DEPENDENCY_KINDS = ("processed", "route", "separated", "mined")


def dependency(model: RareEarthModel, bloc: int, kind: str) -> float:
    """Share of a bloc's consumption (by value at reference prices) with a Chinese link.

    Kinds: ``separated`` (separated into oxides in CN), ``processed`` (processed in CN at any
    stage: separation or magnet making), ``mined`` (mined in CN), ``route`` (mined or
    processed in CN: the route touched China).
    """
    return float(_dependency_table(model)[kind][bloc])


def _dependency_table(model: RareEarthModel) -> dict[str, np.ndarray]:
    """Per kind (see :func:`dependency`), per bloc: this tick's dependency, computed once."""
    return _table(model, "dependency", _compute_dependency)


def _compute_dependency(model: RareEarthModel) -> dict[str, np.ndarray]:
    w, g = model.world, _groups(model)
    attr_mass = model.consumed_attr_t  # per buyer × attribute, t
    tonnes = np.stack(  # per (all consumption, then each kind of link) × buyer, t
        [
            w.buyers.consumed_t,
            attr_mass[:, w.layout.processed_cn],
            attr_mass[:, w.layout.touched_cn],
            provenance.separated_in(attr_mass, w.layout, w.china),
            provenance.mined_in(attr_mass, w.layout, w.china),
        ]
    )
    value = np.bincount(  # per (all, then each kind) × bloc, at reference prices
        g.buyer_kind_bloc.ravel(),
        (g.value_weight * tonnes).ravel(),
        minlength=tonnes.shape[0] * len(BLOCS),
    ).reshape(tonnes.shape[0], len(BLOCS))
    total, some = value[0], value[0] > 0  # per bloc
    shares = np.where(some, value[1:] / np.where(some, total, 1.0), np.nan)  # per kind × bloc
    return dict(zip(_DEPENDENCY_KINDS, shares, strict=True))


# ------------------------------------------------------------------ production structure


def _output_by_country(model: RareEarthModel, stage: int) -> np.ndarray:
    """Per country: this tick's output of a stage (t REO; magnets by their REO content)."""
    return _table(model, "output_by_country", _compute_output_by_country)[stage]


def _compute_output_by_country(model: RareEarthModel) -> np.ndarray:
    w, g = model.world, _groups(model)
    p = w.producers
    reo = np.where(p.stage == 2, w.reo_content[-1], 1.0) * p.output_t  # per producer
    n_countries = w.layout.n_countries
    return np.bincount(g.stage_country, reo, minlength=len(STAGES) * n_countries).reshape(
        len(STAGES), n_countries
    )  # per stage × country


def china_share(model: RareEarthModel, stage: int) -> float:
    """China's share of world output of a stage this tick."""
    by_country = _output_by_country(model, stage)
    total = by_country.sum()
    return float(by_country[model.world.china] / total) if total > 0 else float("nan")


def hhi(model: RareEarthModel, stage: int) -> float:
    """Herfindahl–Hirschman index of a stage's output by country (0–10,000)."""
    by_country = _output_by_country(model, stage)
    total = by_country.sum()
    return float(((100 * by_country / total) ** 2).sum()) if total > 0 else float("nan")


def capacity(model: RareEarthModel, stage: int, bloc: int) -> float:
    """Built capacity (operating or idle) of a stage in a bloc, per year."""
    return float(_stage_bloc_table(model)["capacity"][stage, bloc])


def _stage_bloc_table(model: RareEarthModel) -> dict[str, np.ndarray]:
    """Per stage × bloc: built capacity and this tick's profit, computed once per tick."""
    return _table(model, "stage_bloc", _compute_stage_bloc)


def _compute_stage_bloc(model: RareEarthModel) -> dict[str, np.ndarray]:
    p, cell = model.world.producers, _groups(model).stage_bloc  # per producer
    built = (p.status == OPERATING) | (p.status == IDLE)  # per producer
    cells, shape = len(STAGES) * len(BLOCS), (len(STAGES), len(BLOCS))
    return {
        "capacity": np.bincount(cell, p.capacity_t_per_yr * built, cells).reshape(shape),
        "profit": np.bincount(cell, model.tick_profit, cells).reshape(shape),
    }


def utilisation(model: RareEarthModel, stage: int) -> float:
    """Output over effective capacity, operating producers of a stage."""
    producers = _groups(model).stage_producers[stage]
    cap = model.effective_capacity[producers].sum()
    output = model.world.producers.output_t[producers].sum()
    return float(output / cap) if cap > 0 else float("nan")


def active_producers(model: RareEarthModel, stage: int) -> float:
    """Number of operating producers of a stage."""
    status = model.world.producers.status[_groups(model).stage_producers[stage]]
    return float(np.count_nonzero(status == OPERATING))


def profit(model: RareEarthModel, stage: int, bloc: int) -> float:
    """Cash profit of producers of a stage in a bloc this tick: sales − purchases − costs."""
    return float(_stage_bloc_table(model)["profit"][stage, bloc])


# ------------------------------------------------------------------ demand side


def shortage(model: RareEarthModel, bloc: int, product: int | None = None) -> float:
    """Unmet share of a bloc's end-use need this tick (by value at reference prices).

    With ``product``, only the need of buyers of that product.
    """
    return _table(model, "shortage", _compute_shortage)[bloc, product]


def _compute_shortage(model: RareEarthModel) -> dict[tuple[int, int | None], float]:
    """Per (bloc, product or None for all products): this tick's shortage."""
    g, b = _groups(model), model.world.buyers
    need_value, got_value = g.value_weight * b.need_t, g.value_weight * b.consumed_t  # per buyer
    table = {}
    for order, runs in g.shortage_runs:
        need_by_run, got_by_run = need_value[order], got_value[order]  # per buyer, run by run
        for cell, run in runs.items():
            need = need_by_run[run].sum()
            table[cell] = float(1 - got_by_run[run].sum() / need) if need > 0 else float("nan")
    return table


def seller_stock(model: RareEarthModel, product: int) -> float:
    """Tonnes of a product held by sellers (the balance problem shows here)."""
    return float(model.world.stocks.qty_t[_groups(model).seller_rows[product]].sum())


def _reserve_price(model: RareEarthModel) -> float:
    rows = model.reserve.rows
    if rows is None:
        return 0.0
    return float(model.expected_market_price[model.world.stocks.product[rows[0]]])


# ------------------------------------------------------------------ registry
#
# Metrics come in families computed together, once per tick: a family's function returns every
# value of the tick in the family's order (prices of all products, shares of all blocs, ...).
# A metric alone reads its value from the family's table; the collector takes whole families
# at once, which spares a call per metric. Each value is computed exactly as by the functions
# above (the same operations on the same numbers).


@dataclass(eq=False)
class _Family:
    """Metrics computed together: ``values`` gives every value of a tick, in the family's order."""

    key: str  # its table's name
    values: Callable[[RareEarthModel], list[float]]
    size: int = 0  # its metrics


def _family_value(model: RareEarthModel, family: _Family, index: int) -> float:
    """One value of a family's table for this tick (a metric's reporter, as a ``partial``)."""
    return _table(model, family.key, family.values)[index]


def _product_values(model: RareEarthModel) -> list[float]:
    """Per product: its five prices, its two-tier spread and its sellers' stock."""
    prices = {kind: table.tolist() for kind, table in _price_table(model).items()}
    out: list[float] = []
    for p in range(len(model.world.products)):
        kinds = [prices[kind][p] for kind in _PRICE_KINDS]
        out += [*kinds, two_tier_spread(model, p), seller_stock(model, p)]
    return out


def _bloc_values(model: RareEarthModel) -> list[float]:
    """Per bloc: its dependencies, shortage, fill rate and shortage of each end product."""
    dependencies = {kind: table.tolist() for kind, table in _dependency_table(model).items()}
    shortages = _table(model, "shortage", _compute_shortage)
    out: list[float] = []
    for b in range(len(BLOCS)):
        short = shortages[b, None]
        out += [dependencies[kind][b] for kind in _DEPENDENCY_ORDER]
        out += [short, 1 - short]
        out += [shortages[b, p] for p in range(1, len(model.world.products))]
    return out


def _stage_values(model: RareEarthModel) -> list[float]:
    """Per stage: China's share, HHI, utilisation, producers, then capacity and profit per bloc."""
    table = _stage_bloc_table(model)
    built, profits = table["capacity"].tolist(), table["profit"].tolist()
    out: list[float] = []
    for st in range(len(STAGES)):
        out += [china_share(model, st), hhi(model, st), utilisation(model, st)]
        out.append(active_producers(model, st))
        for b in range(len(BLOCS)):
            out += [built[st][b], profits[st][b]]
    return out


def _world_values(model: RareEarthModel) -> list[float]:
    """Fiscal flows, the reserve, entry and exit, and the balance checks."""
    status = model.world.producers.status
    return [
        *(model.tick_fiscal[key] for key, _ in _FISCAL),
        model.reserve.stock_t,
        float(model.tick_out[-1]),
        model.reserve.stock_t * _reserve_price(model) / 1000.0,
        model.reserve.tick_released_t,
        float(model.tick_buyer_spend.sum()),
        float(model.entries_total),
        float(model.exits_total),
        float((status == CONSTRUCTION).sum()),
        float((status == PLANNED).sum()),
        float((status == CLOSED).sum()),
        *_table(model, "balances", _compute_balances),
    ]


def _compute_balances(model: RareEarthModel) -> tuple[float, float]:
    return model.mass_balance_error_t(), model.money_balance_error_usd_million()


def keep_balances(model: RareEarthModel, mass_t: float, money_usd_million: float) -> None:
    """Keep the balance errors just computed (by the invariant check) for this tick's metrics.

    The metrics then report them rather than computing them again.
    """
    _tick_tables(model)["balances"] = (mass_t, money_usd_million)


_PRICE_KINDS = ("world", "cn_domestic", "export_fob", "alliance_landed", "compliant")
_DEPENDENCY_ORDER = ("separated", "processed", "mined", "route")
_FISCAL = (
    ("tariff_revenue", "Tariff revenue of importing blocs."),
    ("duty_revenue", "Export duty revenue (China)."),
    ("levy_revenue", "Border levy revenue (alliance)."),
    ("floor_subsidy", "Price-floor subsidy paid (alliance)."),
    ("floor_upside", "Upside above the floor taken by the alliance from covered producers."),
    ("strategic_pricing", "China's budget spent topping up below-cost export prices."),
    ("offtake_purchases", "Alliance offtake purchases at the floor price."),
    ("reserve_carrying_cost", "Carrying cost of the reserve's capital."),
)


def _build_registry(model: RareEarthModel) -> list[Metric]:
    w = model.world
    out: list[Metric] = []

    def family(key: str, values: Callable[[RareEarthModel], list[float]]) -> Callable[..., None]:
        group = _Family(key, values)

        def add(name: str, unit: str, meaning: str) -> None:
            out.append(
                Metric(name, unit, meaning, partial(_family_value, family=group, index=group.size))
            )
            group.size += 1

        return add

    add = family("family:products", _product_values)
    for name in w.products:
        unit = "US$/kg REO" if name == "concentrate" else "US$/kg"
        tag = slug(name)
        add(f"price_world_{tag}", unit, f"Volume-weighted price of all {name} trades (at the ask).")
        add(
            f"price_cn_domestic_{tag}",
            unit,
            f"Volume-weighted price of {name} sold by CN sellers to CN buyers.",
        )
        add(
            f"price_export_fob_{tag}",
            unit,
            f"Volume-weighted price of {name} sold by CN sellers abroad, duty paid, before tariff.",
        )
        add(
            f"price_alliance_landed_{tag}",
            unit,
            f"Volume-weighted all-in landed cost alliance buyers paid for {name}.",
        )
        add(
            f"price_compliant_{tag}",
            unit,
            f"Volume-weighted price of compliant {name} (CN share within de minimis).",
        )
        add(f"two_tier_spread_{tag}", unit, f"Export FOB minus China domestic price of {name}.")
        add(f"seller_stock_t_{tag}", "t", f"Stock of {name} held by its sellers.")
    add = family("family:blocs", _bloc_values)
    texts = {
        "separated": "separated into oxides in China",
        "processed": "processed in China at any stage (separation or magnets)",
        "mined": "mined in China",
        "route": "whose route touched China (mined or processed)",
    }
    for bloc in BLOCS:
        for kind in _DEPENDENCY_ORDER:
            add(
                f"dependency_{kind}_cn_{bloc}",
                "share",
                f"Share of the {bloc} bloc's consumption (value at reference prices) "
                f"{texts[kind]}.",
            )
        add(
            f"shortage_{bloc}",
            "share",
            f"Unmet share of the {bloc} bloc's end-use need (value-weighted).",
        )
        add(f"fill_rate_{bloc}", "share", f"1 − shortage_{bloc}.")
        for product in w.products[1:]:  # concentrate has no end users
            add(
                f"shortage_{bloc}_{slug(product)}",
                "share",
                f"Unmet share of the {bloc} bloc's end-use need of {product}.",
            )
    add = family("family:stages", _stage_values)
    for stage in STAGES:
        unit = "t magnet/yr" if stage == "magnets" else "t REO/yr"
        add(f"cn_share_{stage}", "share", f"China's share of world {stage} output this tick.")
        add(
            f"hhi_{stage}",
            "index 0–10,000",
            f"Herfindahl–Hirschman index of {stage} output by country.",
        )
        add(
            f"utilisation_{stage}", "share", f"Output over effective capacity of {stage} producers."
        )
        add(f"active_producers_{stage}", "count", f"Operating {stage} producers.")
        for bloc in BLOCS:
            add(
                f"capacity_{stage}_{bloc}",
                unit,
                f"Built {stage} capacity (operating or idle) in the {bloc} bloc.",
            )
            add(
                f"profit_{stage}_{bloc}",
                "US$ M per tick",
                f"Cash profit of {stage} producers in the {bloc} bloc.",
            )
    add = family("family:world", _world_values)
    for key, text in _FISCAL:
        add(f"{key}_usd_million", "US$ M per tick", text)
    add("reserve_stock_t", "t", "Stock held by the strategic reserve (and offtake).")
    add(
        "reserve_spend_usd_million",
        "US$ M per tick",
        "What the strategic reserve paid for purchases this tick.",
    )
    add(
        "reserve_value_usd_million",
        "US$ M",
        "Reserve stock at the market's expected price of its product.",
    )
    add("reserve_release_t", "t per tick", "Stock the reserve released for sale.")
    add(
        "buyers_landed_cost_usd_million",
        "US$ M per tick",
        "What end buyers paid for their purchases, all-in.",
    )
    add("entries_total", "count", "Pipeline projects come online so far.")
    add("exits_total", "count", "Producers closed so far.")
    add("projects_under_construction", "count", "Pipeline projects being built.")
    add("projects_planned", "count", "Pipeline projects not (yet) started.")
    add("closed_producers", "count", "Producers closed.")
    add(
        "mass_balance_error_t",
        "t REO",
        "Mined − (stock change + in transit + consumed + losses); zero up to rounding.",
    )
    add(
        "money_balance_error_usd_million",
        "US$ M",
        "Sum over every account of the closed money system; zero up to rounding.",
    )
    return out


def registry(model: RareEarthModel) -> list[Metric]:
    """The metrics of this model's world (depend on its products)."""
    return _build_registry(model)


class Collector(mesa.DataCollector):
    """Mesa's ``DataCollector``, taking the registry's metrics a family at a time.

    Mesa deep-copies every reported value (a reporter could return a list it goes on
    changing); ours return floats, which are immutable, so after Mesa's own first collection
    (which validates the reporters) values are appended as they are, each family's values of
    the tick from one call. Other model reporters a user adds are called one by one; agent and
    table reporters, if a user adds any, go through Mesa's collection as before.
    """

    def collect(self, model: mesa.Model) -> None:
        """Record every model reporter's value for this tick."""
        if (
            not getattr(self, "_validated", False)
            or self.agent_reporters
            or self.agenttype_reporters
        ):
            super().collect(model)
            return
        if hasattr(self, "_collection_steps"):
            self._collection_steps.append(model.time)
        plan = getattr(self, "_plan", None)
        if plan is None or plan[0] != len(self.model_reporters):  # reporters added since
            plan = self._plan = (len(self.model_reporters), *self._collection_plan())
        _, families, others = plan
        for key, values, columns in families:
            # each value onto its column, the loop run by ``deque`` (in C) rather than Python
            deque(map(list.append, columns, _table(model, key, values)), maxlen=0)
        for column, reporter in others:
            column.append(reporter(model))

    def _collection_plan(self) -> tuple[list[tuple[str, Any, list[list[Any]]]], list[Any]]:
        """Families whose every metric is reported (taken whole), then the other reporters."""
        members: dict[int, list[tuple[int, list[Any]]]] = {}
        families: dict[int, _Family] = {}
        others = []
        for var, reporter in self.model_reporters.items():
            if isinstance(reporter, partial) and reporter.func is _family_value:
                group, index = reporter.keywords["family"], reporter.keywords["index"]
                families[id(group)] = group
                members.setdefault(id(group), []).append((index, self.model_vars[var]))
            else:
                others.append((self.model_vars[var], reporter))
        whole = []
        for ident, group in families.items():
            columns = sorted(members[ident], key=lambda member: member[0])
            if [index for index, _ in columns] == list(range(group.size)):
                whole.append((group.key, group.values, [column for _, column in columns]))
            else:  # some of its metrics are left out or reported twice: one by one
                others += [
                    (column, partial(_family_value, family=group, index=index))
                    for index, column in columns
                ]
        return whole, others


def reporters(model: RareEarthModel) -> dict[str, Callable[[RareEarthModel], float]]:
    """Model reporters for Mesa's ``DataCollector``, one per metric."""
    return {m.name: m.compute for m in registry(model)}


def glossary(model: RareEarthModel) -> pd.DataFrame:
    """Name, unit and meaning of every metric."""
    return pd.DataFrame(
        [(m.name, m.unit, m.meaning) for m in registry(model)], columns=["name", "unit", "meaning"]
    )


def glossary_markdown(model: RareEarthModel) -> str:
    """The glossary as a Markdown table."""
    rows = [f"| `{m.name}` | {m.unit} | {m.meaning} |" for m in registry(model)]
    return "\n".join(["| name | unit | meaning |", "|---|---|---|", *rows])


def country_flows(model: RareEarthModel) -> dict[str, np.ndarray]:
    """This tick's flows summed per product and country pair (``flow_log: countries``).

    Prices and the touched-by-China share become flow-weighted means over the pair's edges.
    Each pair is keyed ``(product · countries + seller country) · countries + buyer country``.
    Sums run over every edge in edge order (edges that moved nothing add exactly zero), so
    they equal sums over the edge log.
    """
    w, e = model.world, model.world.edges
    n_c = w.layout.n_countries
    n_keys = len(w.products) * n_c * n_c
    pairs = getattr(model, "_country_pairs", None)  # edges never change
    if pairs is None:
        key = (e.product * n_c + e.seller_country) * n_c + e.buyer_country  # per edge
        pairs = model._country_pairs = (key, provenance.GroupSums(key, n_keys))
    key, per_pair = pairs
    flow = e.flow_t
    total = np.bincount(key, flow, minlength=n_keys)  # per pair
    cells = np.flatnonzero(total > 0)
    moved = total[cells]
    touched_cn = np.ascontiguousarray(w.stocks.attrs[:, w.layout.touched_cn])  # per stock row
    touched = np.take(touched_cn, e.seller)  # per edge

    def mean(per_t: np.ndarray) -> np.ndarray:
        return per_pair.of(flow, per_t)[cells] / moved  # flow-weighted, summed edge by edge

    return {
        "tick": model.tick,
        "key": cells,
        "flow_t": moved,
        "ask_usd_per_kg": mean(model.edge_ask),
        "landed_usd_per_kg": mean(model.edge_landed),
        "touched_cn_share": mean(touched),
    }


VALUES_LOGGED = ("flow_t",)  # per edge, in the edge log
ROW_VALUES_LOGGED = ("touched_cn_by_row", "ask_by_row")  # per stock row, in the edge log


def _edge_rows(entry: dict[str, Any], seller: np.ndarray) -> dict[str, Any]:
    """One tick's record of the edge log as rows of its moving edges, with their prices.

    A record keeps either its moving edges (``edge`` and their flows) or, when most edges
    moved, every edge with no index (``abm.model.DENSE_LOG``). Prices are kept where they are
    set: each seller's quoted ask per stock row, the edges a policy priced apart from it
    (``ask_edge``, ``ask_value``), the levies (``levy_edge``, ``levy_value``) and the tick's
    edge terms (``terms``: duty, tariff, transport, per edge). Each edge's ask and landed cost
    are worked out here with the clearing's own formula, so they are the clearing's bit for
    bit. The touched-by-China share is kept per stock row and read at each edge's seller.
    """
    if "edge" in entry:
        edge, flow = entry["edge"], entry["flow_t"]
    else:
        edge = np.flatnonzero(entry["flow_t"] > 0)
        flow = entry["flow_t"][edge]
    sellers = seller[edge]  # per moving edge: its stock row
    ask = entry["ask_by_row"][sellers]  # per moving edge
    levy = np.zeros(len(edge))
    for values, at, kept in ((ask, "ask_edge", "ask_value"), (levy, "levy_edge", "levy_value")):
        if at in entry:
            _set_where_moved(values, edge, entry[at], entry[kept])
    duty, tariff, transport = (term[edge] for term in entry["terms"])
    return {
        "tick": entry["tick"],
        "edge": edge,
        "flow_t": flow,
        "ask_usd_per_kg": ask,
        "landed_usd_per_kg": market.landed_cost(ask, duty, tariff, levy, transport, 0.0),
        "touched_cn_share": entry["touched_cn_by_row"][sellers],
    }


def _set_where_moved(values: np.ndarray, edge: np.ndarray, at: np.ndarray, new: np.ndarray) -> None:
    """Set ``values`` (per moving edge, at ``edge``) to ``new`` at the edges ``at`` that moved.

    Both edge lists are increasing.
    """
    where = np.searchsorted(edge, at)  # per edge of ``at``: its place among the moving edges
    moved = where < len(edge)
    moved[moved] = edge[where[moved]] == at[moved]
    values[where[moved]] = new[moved]


def _concatenated(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The records' columns end to end, and each row's tick."""
    log = {k: np.concatenate([r[k] for r in records]) for k in records[0] if k != "tick"}
    log["tick"] = np.repeat(  # a record holds one tick: each of its rows gets it
        np.array([r["tick"] for r in records], dtype=np.int64),
        [len(r["flow_t"]) for r in records],
    )
    return log


def flows_frame(model: RareEarthModel) -> pd.DataFrame:
    """Flows of every collected tick: tick, seller, buyer, product, countries, prices.

    At ``flow_log: countries`` a row is a product's flow between two countries, its seller
    and buyer the country codes; at ``none`` the frame is empty. The name columns are pandas'
    default string dtype, built from each name's index (:func:`_labels`).
    """
    columns = [
        "tick",
        "seller",
        "buyer",
        "product",
        "seller_country",
        "buyer_country",
        "flow_t",
        "ask_usd_per_kg",
        "landed_usd_per_kg",
        "touched_cn_share",
    ]
    if not model.flow_log:
        return pd.DataFrame(columns=columns)
    w = model.world
    e = w.edges
    countries = w.layout.countries
    if "key" in model.flow_log[0]:  # product and country pair
        log = _concatenated(model.flow_log)
        product, pair = np.divmod(log["key"], w.layout.n_countries**2)
        seller_country, buyer_country = np.divmod(pair, w.layout.n_countries)
        names, seller, buyer = countries, seller_country, buyer_country
    else:
        log = _concatenated([_edge_rows(entry, e.seller) for entry in model.flow_log])
        edge = log["edge"]
        product = e.product[edge]
        seller_country, buyer_country = e.seller_country[edge], e.buyer_country[edge]
        names = [a.name for a in model._row_agent]
        seller, buyer = e.seller[edge], e.buyer[edge]
    return pd.DataFrame(
        {
            "tick": log["tick"],
            "seller": _labels(names, seller),
            "buyer": _labels(names, buyer),
            "product": _labels(w.products, product),
            "seller_country": _labels(countries, seller_country),
            "buyer_country": _labels(countries, buyer_country),
            "flow_t": log["flow_t"],
            "ask_usd_per_kg": log["ask_usd_per_kg"],
            "landed_usd_per_kg": log["landed_usd_per_kg"],
            "touched_cn_share": log["touched_cn_share"],
        }
    )


def _labels(names: list[str], index: np.ndarray) -> Any:
    """``names[index]`` as a column of pandas' default string dtype.

    Where pandas keeps strings in Arrow (pandas 3), Arrow's ``take`` builds the column from
    the names in one pass, with no Python string per row (three ticks of a 100,000-buyer
    world, 6.9 million rows: the frame in 3.2 s instead of 10.4 s); otherwise a NumPy array
    of objects.
    """
    dtype = pd.Series(["x"]).dtype
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
        taken = pa.array(names, type=pa.large_string()).take(pa.array(index))
        return pd.array(taken, dtype=dtype)
    return np.asarray(names, dtype=object)[index]


def consumption_record(model: RareEarthModel) -> dict[str, np.ndarray]:
    """This tick's end-use consumption by provenance, as non-zero cells.

    Returns:
        Arrays per cell of (product × consuming bloc × mining country × separation country,
        the last separation column being "not separated"): ``product``, ``bloc``, ``mine``,
        ``separation`` (indices) and ``t`` (tonnes of the product consumed).
    """
    w, g = model.world, _groups(model)
    n = w.layout.n_countries
    # per group × attribute, t: each group's buyers summed in buyer order (on the row threads)
    _, by_group = g.consumption_routes.inflows(g.consumption_ones, model.consumed_attr_t)
    cube = np.zeros((len(w.products) * len(BLOCS), n, n + 1))  # per product × bloc cell
    cube[g.consumption_routes.dest] = provenance.origin_matrix(by_group, w.layout)  # mine × sep
    cell, mine, sep = np.nonzero(cube > 0)
    return {
        "product": cell // len(BLOCS),
        "bloc": cell % len(BLOCS),
        "mine": mine,
        "separation": sep,
        "t": cube[cell, mine, sep],
    }


def consumption_frame(model: RareEarthModel) -> pd.DataFrame:
    """End-use consumption by provenance, every collected tick (non-zero cells only).

    Columns: ``tick``, ``product``, ``bloc`` (consuming bloc), ``mine_country``,
    ``separation_country`` (``"unseparated"`` for material not separated), ``t`` (tonnes of
    the product) and ``t_reo`` (tonnes of REO it contains).
    """
    columns = ["tick", "product", "bloc", "mine_country", "separation_country", "t", "t_reo"]
    if not model.consumption_log:
        return pd.DataFrame(columns=columns)
    first_tick = model.tick - len(model.consumption_log) + 1
    tick = np.concatenate(
        [np.full(len(r["t"]), first_tick + i) for i, r in enumerate(model.consumption_log)]
    )
    log = {
        k: np.concatenate([r[k] for r in model.consumption_log])
        for k in ("product", "bloc", "mine", "separation", "t")
    }
    w = model.world
    countries = np.array(w.layout.countries)
    return pd.DataFrame(
        {
            "tick": tick,
            "product": np.array(w.products)[log["product"]],
            "bloc": np.array(BLOCS)[log["bloc"]],
            "mine_country": countries[log["mine"]],
            "separation_country": np.append(countries, "unseparated")[log["separation"]],
            "t": log["t"],
            "t_reo": log["t"] * w.reo_content[log["product"]],
        },
        columns=columns,
    )
