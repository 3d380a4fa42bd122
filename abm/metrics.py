"""Every metric of MODEL.md §10, defined once: name, unit, meaning and how it is computed.

A metric is a function of the model after a tick. The registry :data:`METRICS` serves Mesa's
``DataCollector`` (:func:`reporters`), the CLI's tables, the glossary in the docs
(:func:`glossary_markdown`) and, later, sweeps and notebooks. Names depend on the scenario's
products (``oxide:NdPr`` appears as ``oxide_NdPr``), blocs and stages.

Undefined values are NaN, not zero: a price with no trade behind it this tick (e.g. the
export FOB price when China exports nothing) is NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from abm import provenance
from abm.world import BLOCS, CLOSED, IDLE, MINE, OPERATING, PLANNED, PROCESSOR

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


def _edge_view(model: RareEarthModel) -> dict[str, np.ndarray]:
    """This tick's per-edge facts and metric tables (prices, dependency), computed once.

    Cached by tick: read it only once the tick's trades and consumption are done (collection).
    """
    key = (model.tick, model.steps)
    cached = getattr(model, "_metrics_edge_view", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    view = _compute_edge_view(model)
    model._metrics_edge_view = (key, view)
    return view


def _compute_edge_view(model: RareEarthModel) -> dict[str, np.ndarray]:
    w = model.world
    e = w.edges
    seller_c, buyer_c = e.seller_country, e.buyer_country  # per edge
    return {
        "seller_cn": seller_c == w.china,
        "buyer_cn": buyer_c == w.china,
        "buyer_bloc": w.country_bloc[buyer_c],
        "compliant": model.compliant_rows(e.seller),
        "product": e.product,
        "flow": e.flow_t,
    }


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
    v = _edge_view(model)
    if "prices" not in v:
        markets = model.world.edges.market_slices  # per product: its contiguous edges
        traded_at = [edges.start for edges in markets if edges.stop > edges.start]
        filled = np.array([edges.stop > edges.start for edges in markets])  # per product

        def by_product(per_edge: np.ndarray) -> np.ndarray:
            out = np.zeros(len(markets))
            if traded_at:  # markets tile the edge list in product order
                out[filled] = np.add.reduceat(per_edge, traded_at)
            return out

        flow = v["flow"]  # per edge
        volume = by_product(flow)  # per product
        select = {  # per edge
            "world": True,
            "cn_domestic": v["seller_cn"] & v["buyer_cn"],
            "export_fob": v["seller_cn"] & ~v["buyer_cn"],
            "alliance_landed": v["buyer_bloc"] == BLOCS.index("alliance"),
            "compliant": v["compliant"],
        }
        table = {}
        for kind, mask in select.items():
            prices = model.edge_ask  # per edge, US$/kg
            if kind == "alliance_landed":
                prices = model.edge_landed
            elif kind == "export_fob":
                prices = prices * (1.0 + model.world.edges.duty)  # duty paid
            selected = flow if mask is True else flow * mask  # per edge: tonnes of this kind
            traded, value = by_product(selected), by_product(selected * prices)
            # a trade counts when it is more than a billionth of the product's volume this
            # tick, so vanishing logit tails (underflowing differently at different scales)
            # do not count
            counts = traded > NEGLIGIBLE_SHARE * volume
            table[kind] = np.where(counts, value / np.where(counts, traded, 1.0), np.nan)
        v["prices"] = table
    return v["prices"]


def two_tier_spread(model: RareEarthModel, product: int) -> float:
    """Export FOB minus China domestic price of one product (US$/kg)."""
    return price(model, product, "export_fob") - price(model, product, "cn_domestic")


# ------------------------------------------------------------------ dependency


def _consumption_value_weights(model: RareEarthModel) -> np.ndarray:
    """Per buyer: weight of a tonne consumed, its product's reference price (value basis)."""
    b = model.world.buyers
    return model.world.reference_price[b.product]


def dependency(model: RareEarthModel, bloc: int, kind: str) -> float:
    """Share of a bloc's consumption (by value at reference prices) with a Chinese link.

    Kinds: ``separated`` (separated into oxides in CN), ``processed`` (processed in CN at any
    stage: separation or magnet making), ``mined`` (mined in CN), ``route`` (mined or
    processed in CN: the route touched China).
    """
    return float(_dependency_table(model)[kind][bloc])


def _dependency_table(model: RareEarthModel) -> dict[str, np.ndarray]:
    """Per kind (see :func:`dependency`), per bloc: this tick's dependency, computed once."""
    v = _edge_view(model)
    if "dependency" not in v:
        w = model.world
        b = w.buyers
        bloc = w.country_bloc[b.country]  # per buyer
        weight = _consumption_value_weights(model)  # per buyer
        attr_mass = model.consumed_attr_t  # per buyer × attribute, t
        linked = {  # per buyer: tonnes consumed with the link
            "processed": attr_mass[:, w.layout.processed_cn],
            "route": attr_mass[:, w.layout.touched_cn],
            "separated": provenance.separated_in(attr_mass, w.layout, w.china),
            "mined": provenance.mined_in(attr_mass, w.layout, w.china),
        }
        total = np.bincount(bloc, weight * b.consumed_t, minlength=len(BLOCS))  # per bloc
        some = total > 0
        v["dependency"] = {
            kind: np.where(
                some,
                np.bincount(bloc, weight * tonnes, minlength=len(BLOCS))
                / np.where(some, total, 1.0),
                np.nan,
            )
            for kind, tonnes in linked.items()
        }
    return v["dependency"]


# ------------------------------------------------------------------ production structure


def _output_by_country(model: RareEarthModel, stage: int) -> np.ndarray:
    p = model.world.producers
    in_stage = p.stage == stage
    out = p.output_t[in_stage] * (model.world.reo_content[-1] if stage == 2 else 1.0)
    return np.bincount(p.country[in_stage], out, minlength=model.world.layout.n_countries)


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
    v = _edge_view(model)
    if "stage_bloc" not in v:
        p, w = model.world.producers, model.world
        cell = p.stage * len(BLOCS) + w.country_bloc[p.country]  # per producer
        built = (p.status == OPERATING) | (p.status == IDLE)  # per producer
        cells, shape = len(STAGES) * len(BLOCS), (len(STAGES), len(BLOCS))
        v["stage_bloc"] = {
            "capacity": np.bincount(cell, p.capacity_t_per_yr * built, cells).reshape(shape),
            "profit": np.bincount(cell, model.tick_profit, cells).reshape(shape),
        }
    return v["stage_bloc"]


def utilisation(model: RareEarthModel, stage: int) -> float:
    """Output over effective capacity, operating producers of a stage."""
    p = model.world.producers
    mask = p.stage == stage
    cap = model.effective_capacity[mask].sum()
    return float(p.output_t[mask].sum() / cap) if cap > 0 else float("nan")


def active_producers(model: RareEarthModel, stage: int) -> float:
    """Number of operating producers of a stage."""
    p = model.world.producers
    return float(((p.stage == stage) & (p.status == OPERATING)).sum())


def profit(model: RareEarthModel, stage: int, bloc: int) -> float:
    """Cash profit of producers of a stage in a bloc this tick: sales − purchases − costs."""
    return float(_stage_bloc_table(model)["profit"][stage, bloc])


# ------------------------------------------------------------------ demand side


def shortage(model: RareEarthModel, bloc: int, product: int | None = None) -> float:
    """Unmet share of a bloc's end-use need this tick (by value at reference prices).

    With ``product``, only the need of buyers of that product.
    """
    w = model.world
    b = w.buyers
    mine = w.country_bloc[b.country] == bloc
    if product is not None:
        mine &= b.product == product
    weight = _consumption_value_weights(model)[mine]
    need = (weight * b.need_t[mine]).sum()
    got = (weight * b.consumed_t[mine]).sum()
    return float(1 - got / need) if need > 0 else float("nan")


def seller_stock(model: RareEarthModel, product: int) -> float:
    """Tonnes of a product held by sellers (the balance problem shows here)."""
    s = model.world.stocks
    producer = (s.owner_kind == MINE) | (s.owner_kind == PROCESSOR)  # per row
    mask = (s.product == product) & producer & (s.role == 0)
    return float(s.qty_t[mask].sum())


def _reserve_price(model: RareEarthModel) -> float:
    rows = model.reserve.rows
    if rows is None:
        return 0.0
    return float(model.expected_market_price[model.world.stocks.product[rows[0]]])


# ------------------------------------------------------------------ registry


def _build_registry(model: RareEarthModel) -> list[Metric]:
    w = model.world
    out: list[Metric] = []
    add = out.append
    for p, name in enumerate(w.products):
        unit = "US$/kg REO" if name == "concentrate" else "US$/kg"
        tag = slug(name)
        add(
            Metric(
                f"price_world_{tag}",
                unit,
                f"Volume-weighted price of all {name} trades (at the ask).",
                partial(price, product=p, kind="world"),
            )
        )
        add(
            Metric(
                f"price_cn_domestic_{tag}",
                unit,
                f"Volume-weighted price of {name} sold by CN sellers to CN buyers.",
                partial(price, product=p, kind="cn_domestic"),
            )
        )
        add(
            Metric(
                f"price_export_fob_{tag}",
                unit,
                f"Volume-weighted price of {name} sold by CN sellers abroad, duty paid, "
                "before tariff.",
                partial(price, product=p, kind="export_fob"),
            )
        )
        add(
            Metric(
                f"price_alliance_landed_{tag}",
                unit,
                f"Volume-weighted all-in landed cost alliance buyers paid for {name}.",
                partial(price, product=p, kind="alliance_landed"),
            )
        )
        add(
            Metric(
                f"price_compliant_{tag}",
                unit,
                f"Volume-weighted price of compliant {name} (CN share within de minimis).",
                partial(price, product=p, kind="compliant"),
            )
        )
        add(
            Metric(
                f"two_tier_spread_{tag}",
                unit,
                f"Export FOB minus China domestic price of {name}.",
                partial(two_tier_spread, product=p),
            )
        )
        add(
            Metric(
                f"seller_stock_t_{tag}",
                "t",
                f"Stock of {name} held by its sellers.",
                partial(seller_stock, product=p),
            )
        )
    for b, bloc in enumerate(BLOCS):
        for kind, text in (
            ("separated", "separated into oxides in China"),
            ("processed", "processed in China at any stage (separation or magnets)"),
            ("mined", "mined in China"),
            ("route", "whose route touched China (mined or processed)"),
        ):
            add(
                Metric(
                    f"dependency_{kind}_cn_{bloc}",
                    "share",
                    f"Share of the {bloc} bloc's consumption (value at reference prices) {text}.",
                    partial(dependency, bloc=b, kind=kind),
                )
            )
        add(
            Metric(
                f"shortage_{bloc}",
                "share",
                f"Unmet share of the {bloc} bloc's end-use need (value-weighted).",
                partial(shortage, bloc=b),
            )
        )
        add(
            Metric(
                f"fill_rate_{bloc}",
                "share",
                f"1 − shortage_{bloc}.",
                lambda m, b=b: 1 - shortage(m, b),
            )
        )
        for p, product in enumerate(model.world.products):
            if p == 0:
                continue  # concentrate has no end users
            add(
                Metric(
                    f"shortage_{bloc}_{slug(product)}",
                    "share",
                    f"Unmet share of the {bloc} bloc's end-use need of {product}.",
                    partial(shortage, bloc=b, product=p),
                )
            )
    for st, stage in enumerate(STAGES):
        unit = "t magnet/yr" if stage == "magnets" else "t REO/yr"
        add(
            Metric(
                f"cn_share_{stage}",
                "share",
                f"China's share of world {stage} output this tick.",
                partial(china_share, stage=st),
            )
        )
        add(
            Metric(
                f"hhi_{stage}",
                "index 0–10,000",
                f"Herfindahl–Hirschman index of {stage} output by country.",
                partial(hhi, stage=st),
            )
        )
        add(
            Metric(
                f"utilisation_{stage}",
                "share",
                f"Output over effective capacity of {stage} producers.",
                partial(utilisation, stage=st),
            )
        )
        add(
            Metric(
                f"active_producers_{stage}",
                "count",
                f"Operating {stage} producers.",
                partial(active_producers, stage=st),
            )
        )
        for b, bloc in enumerate(BLOCS):
            add(
                Metric(
                    f"capacity_{stage}_{bloc}",
                    unit,
                    f"Built {stage} capacity (operating or idle) in the {bloc} bloc.",
                    partial(capacity, stage=st, bloc=b),
                )
            )
            add(
                Metric(
                    f"profit_{stage}_{bloc}",
                    "US$ M per tick",
                    f"Cash profit of {stage} producers in the {bloc} bloc.",
                    partial(profit, stage=st, bloc=b),
                )
            )
    fiscal = (
        ("tariff_revenue", "Tariff revenue of importing blocs."),
        ("duty_revenue", "Export duty revenue (China)."),
        ("levy_revenue", "Border levy revenue (alliance)."),
        ("floor_subsidy", "Price-floor subsidy paid (alliance)."),
        ("floor_upside", "Upside above the floor taken by the alliance from covered producers."),
        ("strategic_pricing", "China's budget spent topping up below-cost export prices."),
        ("offtake_purchases", "Alliance offtake purchases at the floor price."),
        ("reserve_carrying_cost", "Carrying cost of the reserve's capital."),
    )
    for key, text in fiscal:
        add(
            Metric(
                f"{key}_usd_million", "US$ M per tick", text, lambda m, key=key: m.tick_fiscal[key]
            )
        )
    add(
        Metric(
            "reserve_stock_t",
            "t",
            "Stock held by the strategic reserve (and offtake).",
            lambda m: m.reserve.stock_t,
        )
    )
    add(
        Metric(
            "reserve_spend_usd_million",
            "US$ M per tick",
            "What the strategic reserve paid for purchases this tick.",
            lambda m: float(m.tick_out[-1]),
        )
    )
    add(
        Metric(
            "reserve_value_usd_million",
            "US$ M",
            "Reserve stock at the market's expected price of its product.",
            lambda m: m.reserve.stock_t * _reserve_price(m) / 1000.0,
        )
    )
    add(
        Metric(
            "reserve_release_t",
            "t per tick",
            "Stock the reserve released for sale.",
            lambda m: m.reserve.tick_released_t,
        )
    )
    add(
        Metric(
            "buyers_landed_cost_usd_million",
            "US$ M per tick",
            "What end buyers paid for their purchases, all-in.",
            lambda m: float(m.tick_buyer_spend.sum()),
        )
    )
    add(
        Metric(
            "entries_total",
            "count",
            "Pipeline projects come online so far.",
            lambda m: float(m.entries_total),
        )
    )
    add(Metric("exits_total", "count", "Producers closed so far.", lambda m: float(m.exits_total)))
    add(
        Metric(
            "projects_under_construction",
            "count",
            "Pipeline projects being built.",
            lambda m: float((m.world.producers.status == 1).sum()),
        )
    )
    add(
        Metric(
            "projects_planned",
            "count",
            "Pipeline projects not (yet) started.",
            lambda m: float((m.world.producers.status == PLANNED).sum()),
        )
    )
    add(
        Metric(
            "closed_producers",
            "count",
            "Producers closed.",
            lambda m: float((m.world.producers.status == CLOSED).sum()),
        )
    )
    add(
        Metric(
            "mass_balance_error_t",
            "t REO",
            "Mined − (stock change + in transit + consumed + losses); zero up to rounding.",
            lambda m: m.mass_balance_error_t(),
        )
    )
    add(
        Metric(
            "money_balance_error_usd_million",
            "US$ M",
            "Sum over every account of the closed money system; zero up to rounding.",
            lambda m: m.money_balance_error_usd_million(),
        )
    )
    return out


def registry(model: RareEarthModel) -> list[Metric]:
    """The metrics of this model's world (depend on its products)."""
    return _build_registry(model)


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


def flows_frame(model: RareEarthModel) -> pd.DataFrame:
    """Edge flows of every collected tick: tick, seller, buyer, product, countries, prices."""
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
    log = {k: np.concatenate([entry[k] for entry in model.flow_log]) for k in model.flow_log[0]}
    w = model.world
    e, s = w.edges, w.stocks
    edge = log["edge"]
    names = np.array([a.name for a in model._row_agent])
    countries = np.array(w.layout.countries)
    return pd.DataFrame(
        {
            "tick": log["tick"],
            "seller": names[e.seller[edge]],
            "buyer": names[e.buyer[edge]],
            "product": np.array(w.products)[e.product[edge]],
            "seller_country": countries[s.country[e.seller[edge]]],
            "buyer_country": countries[s.country[e.buyer[edge]]],
            "flow_t": log["flow_t"],
            "ask_usd_per_kg": log["ask_usd_per_kg"],
            "landed_usd_per_kg": log["landed_usd_per_kg"],
            "touched_cn_share": log["touched_cn_share"],
        }
    )


def consumption_record(model: RareEarthModel) -> dict[str, np.ndarray]:
    """This tick's end-use consumption by provenance, as non-zero cells.

    Returns:
        Arrays per cell of (product × consuming bloc × mining country × separation country,
        the last separation column being "not separated"): ``product``, ``bloc``, ``mine``,
        ``separation`` (indices) and ``t`` (tonnes of the product consumed).
    """
    w = model.world
    b = w.buyers
    n = w.layout.n_countries
    origin = provenance.origin_matrix(model.consumed_attr_t, w.layout)  # per buyer × mine × sep
    group = b.product * len(BLOCS) + w.country_bloc[b.country]  # per buyer: product × bloc
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
