"""Scenario → the arrays the model runs on: the stock table, producer and buyer state, markets.

Everything the hot path touches lives here as numpy arrays; Mesa agents (``agents.py``) are the
readable face over them. The central structure is the **stock table**: every inventory in the
world is one row — a mine's concentrate, a separation plant's concentrate input and oxide
outputs, a magnet plant's oxide inputs and magnet output, a buyer's inventory. A row carries its
product, owner, quantity (t) and its *lot attributes* (``attrs``), all mass-weighted:

- ``attrs[:, :K]``: provenance shares over (mining country × processing country), where the
  processing country of material not yet separated is the extra column "unprocessed"; only
  the K cells material can reach are kept (:class:`Layout`);
- ``attrs[:, K]``: share processed in China at any stage;
- ``attrs[:, K + 1]``: share whose route touched China (mined or processed there);
- ``attrs[:, K + 2:]``: element composition of the REO content.

A **market** is one product: edges from seller rows (outputs) to buyer rows (inputs) with their
transport cost, lead time and policy terms. Edges are stored sorted by product, then buyer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from abm.scenario import Scenario

MINE, PROCESSOR, BUYER, RESERVE = 0, 1, 2, 3
OUTPUT, INPUT = 0, 1
STATUS = ("planned", "construction", "operating", "idle", "closed")
PLANNED, CONSTRUCTION, OPERATING, IDLE, CLOSED = range(5)
NEVER = np.iinfo(np.int64).max  # tick of capacity that is not scheduled to come online


@dataclass(frozen=True)
class Layout:
    """Column layout of the lot attributes (fixed once made: its sizes are worked out once).

    The provenance block keeps only the cells material can reach (``cells``): a world where a
    few countries mine and separate keeps a narrow table, which every mixing, shipping and
    processing step runs over. Cells keep the order of the full grid (by mining country, then
    separation country, unprocessed last).
    """

    countries: list[str]
    elements: list[str]
    cells: list[tuple[int, int | None]] | None = None  # (mined, separated); None: every pair

    @cached_property
    def n_countries(self) -> int:
        """Number of countries."""
        return len(self.countries)

    @cached_property
    def _grid(self) -> np.ndarray:
        """Per (mining country × separation country or unprocessed): its cell, or -1."""
        n = self.n_countries
        grid = np.full(n * (n + 1), -1)
        if self.cells is None:
            kept = np.arange(len(grid))
        else:
            kept = np.unique([m * (n + 1) + (n if s is None else s) for m, s in self.cells])
        grid[kept] = np.arange(len(kept))
        return grid

    @cached_property
    def cell_mined(self) -> np.ndarray:
        """Per provenance cell: the mining country."""
        return self._kept_pairs[0]

    @cached_property
    def cell_separated(self) -> np.ndarray:
        """Per provenance cell: the separation country (``n_countries``: not yet separated)."""
        return self._kept_pairs[1]

    @cached_property
    def _kept_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Per provenance cell: (mining country, separation country or ``n_countries``)."""
        return np.divmod(np.flatnonzero(self._grid >= 0), self.n_countries + 1)

    @cached_property
    def unprocessed_cells(self) -> np.ndarray:
        """The cells of material not yet separated."""
        return np.flatnonzero(self.cell_separated == self.n_countries)

    @cached_property
    def separated_cells(self) -> np.ndarray:
        """Per separating country × unprocessed cell: the cell its material moves to, or -1."""
        n = self.n_countries
        mined = self.cell_mined[self.unprocessed_cells]
        return self._grid[mined[None, :] * (n + 1) + np.arange(n)[:, None]]

    @cached_property
    def n_origin(self) -> int:
        """Number of provenance cells."""
        return len(self.cell_mined)

    @cached_property
    def processed_cn(self) -> int:
        """Column of the processed-in-China share."""
        return self.n_origin

    @cached_property
    def touched_cn(self) -> int:
        """Column of the route-touched-China share."""
        return self.n_origin + 1

    @cached_property
    def composition(self) -> slice:
        """Columns of the element composition."""
        return slice(self.n_origin + 2, self.n_origin + 2 + len(self.elements))

    @cached_property
    def width(self) -> int:
        """Total number of attribute columns."""
        return self.n_origin + 2 + len(self.elements)

    def origin_cell(self, mine_country: int, processing_country: int | None) -> int:
        """Flat provenance index; ``None`` means not yet processed."""
        n = self.n_countries
        cell = self._grid[
            mine_country * (n + 1) + (n if processing_country is None else processing_country)
        ]
        if cell < 0:
            where = "unprocessed" if processing_country is None else "separated"
            if processing_country is not None:
                where += f" in {self.countries[processing_country]}"
            mined = self.countries[mine_country]
            raise ValueError(f"no provenance cell for material mined in {mined}, {where}")
        return int(cell)

    def origin_cells(self, mine_country: np.ndarray, processing_country: np.ndarray) -> np.ndarray:
        """:meth:`origin_cell` for arrays of countries (``n_countries``: not yet processed)."""
        n = self.n_countries
        cells = self._grid[mine_country * (n + 1) + processing_country]
        if (cells < 0).any():  # the first cell missing raises, named
            r = int(np.flatnonzero(cells < 0)[0])
            processed = int(processing_country[r])
            self.origin_cell(int(mine_country[r]), None if processed == n else processed)
        return cells

    def origin_pair(self, cell: int) -> tuple[int, int | None]:
        """The (mining country, separation country or None) of a provenance cell."""
        separated = int(self.cell_separated[cell])
        return int(self.cell_mined[cell]), None if separated == self.n_countries else separated


@dataclass
class Producers:
    """State of mines or processors (one row each), including pipeline projects."""

    names: list[str]
    stage: np.ndarray  # per producer: 0 mine, 1 separation, 2 magnet
    country: np.ndarray  # per producer: country index
    status: np.ndarray  # per producer: STATUS code
    capacity_t_per_yr: np.ndarray  # per producer: nameplate (built) capacity
    pending_capacity_t_per_yr: np.ndarray  # per producer: capacity under construction
    online_tick: np.ndarray  # per producer: tick the pending capacity comes online
    ramp_ticks: np.ndarray  # per producer: ticks to reach full output after coming online
    ramp_start_tick: np.ndarray  # per producer: tick the latest capacity came online
    unit_cost_usd_per_kg: np.ndarray  # per producer: cash or processing cost
    composition: np.ndarray  # per producer × element: mine ore composition
    recovery: np.ndarray  # per producer × element: separation recovery
    capex_usd_million: np.ndarray  # per producer: project capex (0 for incumbents)
    earliest_tick: np.ndarray  # per producer: first tick a project may start construction
    lead_ticks: np.ndarray  # per producer: construction lead time
    life_years: np.ndarray  # per producer
    discount_rate: np.ndarray  # per producer
    is_project: np.ndarray  # per producer: came from the pipeline
    initial_utilisation: np.ndarray  # per producer: share of capacity in use at the start
    output_rows: np.ndarray  # per producer × product: stock row or -1
    input_rows: np.ndarray  # per producer × product: stock row or -1
    cash_usd_million: np.ndarray = field(default=None)  # type: ignore[assignment]
    loss_months: np.ndarray = field(default=None)  # type: ignore[assignment]
    idle_months: np.ndarray = field(default=None)  # type: ignore[assignment]
    output_t: np.ndarray = field(default=None)  # type: ignore[assignment]
    margin_history: np.ndarray = field(default=None)  # type: ignore[assignment]
    utilisation_history: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n = len(self.names)
        self.cash_usd_million = np.zeros(n)
        self.loss_months = np.zeros(n, dtype=np.int64)
        self.idle_months = np.zeros(n, dtype=np.int64)
        self.output_t = np.zeros(n)  # per producer: output this tick (t REO or t magnet)
        self.margin_history = np.zeros(n)  # per producer: smoothed margin / price
        self.utilisation_history = np.zeros(n)  # per producer: smoothed utilisation


@dataclass
class Buyers:
    """State of end users (one row each)."""

    names: list[str]
    sectors: list[str]
    country: np.ndarray  # per buyer
    product: np.ndarray  # per buyer: product index
    row: np.ndarray  # per buyer: its inventory stock row
    base_demand_t_per_yr: np.ndarray
    growth_rate_per_yr: np.ndarray
    elasticity: np.ndarray
    reference_price: np.ndarray
    reservation_price: np.ndarray
    inventory_target_months: np.ndarray
    security_premium_share: np.ndarray
    min_compliant_share: np.ndarray
    switching_cost: np.ndarray
    substitution_threshold: np.ndarray
    substitution_rate_per_yr: np.ndarray
    substitution_recovery: np.ndarray
    substitution_factor: np.ndarray = field(default=None)  # type: ignore[assignment]
    substitution_low: np.ndarray = field(default=None)  # type: ignore[assignment]
    need_t: np.ndarray = field(default=None)  # type: ignore[assignment]
    consumed_t: np.ndarray = field(default=None)  # type: ignore[assignment]
    cash_usd_million: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n = len(self.names)
        self.substitution_factor = np.ones(n)  # per buyer: demand kept after substitution
        self.substitution_low = np.ones(n)  # per buyer: lowest factor reached so far
        self.need_t = np.zeros(n)  # per buyer: consumption need this tick
        self.consumed_t = np.zeros(n)  # per buyer: consumed this tick
        self.cash_usd_million = np.zeros(n)


@dataclass
class Stocks:
    """The stock table: one row per inventory in the world."""

    product: np.ndarray  # per row: product index
    owner_kind: np.ndarray  # per row: MINE, PROCESSOR or BUYER
    owner: np.ndarray  # per row: index within the owner kind
    role: np.ndarray  # per row: OUTPUT (sold from) or INPUT (bought into)
    country: np.ndarray  # per row: owner's country index
    qty_t: np.ndarray  # per row: tonnes on hand
    attrs: np.ndarray  # per row × attribute: lot attributes, mass-weighted
    ask_usd_per_kg: np.ndarray  # per row: asking price (output rows)
    export_ask_usd_per_kg: np.ndarray  # per row: ask on quota- or licence-controlled exports
    export_orders_t: np.ndarray  # per row: controlled export orders this tick
    export_sold_t: np.ndarray  # per row: controlled exports sold this tick
    expected_price_usd_per_kg: np.ndarray  # per row: smoothed price received or paid
    cost_floor_usd_per_kg: np.ndarray  # per row: ask floor before loss tolerance
    orders_t: np.ndarray  # per row: orders received this tick (output rows)
    available_t: np.ndarray  # per row: stock offered at the market opening
    sold_t: np.ndarray  # per row: sold this tick
    bought_t: np.ndarray  # per row: bought this tick
    desired_t: np.ndarray  # per row: wanted this tick (input rows)
    expected_sales_t: np.ndarray  # per row: smoothed sales per tick (output rows)


@dataclass
class Edges:
    """Trade links seller row → buyer row, sorted by product then buyer row."""

    seller: np.ndarray  # per edge: seller stock row
    buyer: np.ndarray  # per edge: buyer stock row
    product: np.ndarray  # per edge
    seller_country: np.ndarray  # per edge: the seller's country index (fixed)
    buyer_country: np.ndarray  # per edge: the buyer's country index (fixed)
    transport_usd_per_kg: np.ndarray  # per edge, in force (after preferences)
    base_transport_usd_per_kg: np.ndarray  # per edge, from the transport table
    lead_ticks: np.ndarray  # per edge
    tariff: np.ndarray  # per edge: ad valorem
    duty: np.ndarray  # per edge: export duty, ad valorem
    levy_usd_per_kg: np.ndarray  # per edge
    allowed: np.ndarray  # per edge: policy allows trade
    flow_t: np.ndarray  # per edge: delivered (shipped) this tick
    last_flow_t: np.ndarray  # per edge: shipped last tick (switching cost)
    market_slices: list[slice]  # per product: its contiguous edge range


@dataclass
class World:
    """Everything built from a scenario."""

    scenario: Scenario
    layout: Layout
    products: list[str]
    country_bloc: np.ndarray  # per country: 0 alliance, 1 china, 2 other
    china: int
    reo_content: np.ndarray  # per product: t REO per t of product
    magnet_recipe: np.ndarray  # per element: t oxide per t magnet (zeros if no magnet stage)
    producers: Producers
    buyers: Buyers
    stocks: Stocks
    edges: Edges
    transit_t: np.ndarray  # ring slot × row: quantities arriving at ticks ≡ slot (mod slots)
    # per ring slot: (rows, tonnes per row, row × attribute mass) of each shipment arriving
    # then; sparse, as only rows with something on the way take room
    transit_attr_t: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]
    reserve_rows: tuple[int, int] | None  # the reserve's (input, output) rows, if any
    captive: tuple[np.ndarray, np.ndarray]  # per ``sells_to`` link: (mine, plant) producer
    reference_price: np.ndarray  # per product: initial price, the logit's price scale


BLOCS = ("alliance", "china", "other")


def month_index(date: str) -> int:
    """Months since year 0 of a ``YYYY-MM`` date."""
    year, month = date.split("-")
    return int(year) * 12 + int(month) - 1


def build_world(s: Scenario, rng: np.random.Generator | None = None) -> World:
    """Build the world's arrays from a validated scenario.

    ``rng`` (the model's generator) draws the trade links when the scenario asks for a sparse
    network (``network.suppliers_per_buyer``); nothing else here is random.
    """
    countries = list(s.countries)
    c_index = {c: i for i, c in enumerate(countries)}
    e_index = {e: i for i, e in enumerate(s.elements)}
    products = s.products
    p_index = {p: i for i, p in enumerate(products)}
    n_e = len(s.elements)
    bloc_code = {b: i for i, b in enumerate(BLOCS)}
    country_bloc = np.array([bloc_code[s.bloc_of(c)] for c in countries])
    scale = 12.0 / s.ticks_per_year  # months per tick

    recipe = np.zeros(n_e)
    if s.magnet:
        for e, coef in s.magnet.recipe_t_per_t.items():
            recipe[e_index[e]] = coef
    reo_content = np.ones(len(products))
    if s.magnet:
        reo_content[p_index["magnet"]] = recipe.sum()

    entries = [(m, "mine") for m in s.mines]
    entries += [(p, p.stage) for p in s.processors]
    entries += [(p, p.stage) for p in s.projects]
    start = month_index(s.start)

    def shares(mapping: dict[str, float]) -> np.ndarray:
        out = np.zeros(n_e)
        for e, v in mapping.items():
            out[e_index[e]] = v
        return out

    stage_code = {"mine": 0, "separation": 1, "magnet": 2}
    rows: list[tuple[int, int, int, int, int]] = []  # product, kind, owner, role, country
    n_prod = len(entries)
    output_rows = -np.ones((n_prod, len(products)), dtype=np.int64)
    input_rows = -np.ones((n_prod, len(products)), dtype=np.int64)

    def add_row(product: str, kind: int, owner: int, role: int, country: int) -> int:
        rows.append((p_index[product], kind, owner, role, country))
        return len(rows) - 1

    for i, (entry, stage) in enumerate(entries):
        c = c_index[entry.country]
        if stage == "mine":
            output_rows[i, 0] = add_row("concentrate", MINE, i, OUTPUT, c)
        elif stage == "separation":
            input_rows[i, 0] = add_row("concentrate", PROCESSOR, i, INPUT, c)
            rec = getattr(entry, "recovery", {})
            for e in s.elements:
                if rec.get(e, 0.0) > 0:
                    output_rows[i, p_index[f"oxide:{e}"]] = add_row(
                        f"oxide:{e}", PROCESSOR, i, OUTPUT, c
                    )
        else:
            for e in s.elements:
                if recipe[e_index[e]] > 0:
                    input_rows[i, p_index[f"oxide:{e}"]] = add_row(
                        f"oxide:{e}", PROCESSOR, i, INPUT, c
                    )
            output_rows[i, p_index["magnet"]] = add_row("magnet", PROCESSOR, i, OUTPUT, c)

    is_project = np.array([i >= len(s.mines) + len(s.processors) for i in range(n_prod)])

    def entry_cost(entry: object) -> float:
        for attr in ("cash_cost_usd_per_kg", "processing_cost_usd_per_kg", "unit_cost_usd_per_kg"):
            if hasattr(entry, attr):
                return float(getattr(entry, attr))
        raise AssertionError("producer without a cost")

    status = np.array(
        [
            PLANNED if proj else (OPERATING if e.status == "operating" else IDLE)
            for (e, _), proj in zip(entries, is_project, strict=True)
        ]
    )
    capacity = np.array(
        [
            0.0 if proj else e.capacity_t_per_yr
            for (e, _), proj in zip(entries, is_project, strict=True)
        ]
    )
    pending = np.array(
        [
            e.capacity_t_per_yr if proj else 0.0
            for (e, _), proj in zip(entries, is_project, strict=True)
        ]
    )
    producers = Producers(
        names=[e.name for e, _ in entries],
        stage=np.array([stage_code[st] for _, st in entries]),
        country=np.array([c_index[e.country] for e, _ in entries]),
        status=status,
        capacity_t_per_yr=capacity,
        pending_capacity_t_per_yr=pending,
        online_tick=np.full(n_prod, NEVER, dtype=np.int64),
        ramp_ticks=np.array(
            [round(getattr(e, "ramp_up_years", 0.0) * 12 / scale) for e, _ in entries]
        ),
        ramp_start_tick=np.full(n_prod, -(10**9), dtype=np.int64),
        unit_cost_usd_per_kg=np.array([entry_cost(e) for e, _ in entries]),
        composition=np.array([shares(getattr(e, "composition", {})) for e, _ in entries]),
        recovery=np.array([shares(getattr(e, "recovery", {})) for e, _ in entries]),
        capex_usd_million=np.array([getattr(e, "capex_usd_million", 0.0) for e, _ in entries]),
        earliest_tick=np.array(
            [
                round((month_index(e.earliest_start) - start) / scale) if proj else 0
                for (e, _), proj in zip(entries, is_project, strict=True)
            ]
        ),
        lead_ticks=np.array(
            [round(getattr(e, "lead_time_years", 0.0) * 12 / scale) for e, _ in entries]
        ),
        life_years=np.array([getattr(e, "life_years", 20.0) for e, _ in entries]),
        discount_rate=np.array([getattr(e, "discount_rate", 0.1) for e, _ in entries]),
        is_project=is_project,
        initial_utilisation=np.array(
            [
                0.0 if proj else e.utilisation
                for (e, _), proj in zip(entries, is_project, strict=True)
            ]
        ),
        output_rows=output_rows,
        input_rows=input_rows,
    )

    buyer_rows = [
        add_row(b.product, BUYER, j, INPUT, c_index[b.country]) for j, b in enumerate(s.buyers)
    ]
    reserve_rows = _reserve_rows(s, add_row, c_index)
    B = s.buyers
    buyers = Buyers(
        names=[b.name for b in B],
        sectors=[b.sector for b in B],
        country=np.array([c_index[b.country] for b in B]),
        product=np.array([p_index[b.product] for b in B]),
        row=np.array(buyer_rows),
        base_demand_t_per_yr=np.array([b.base_demand_t_per_yr for b in B]),
        growth_rate_per_yr=np.array([b.growth_rate_per_yr for b in B]),
        elasticity=np.array([b.elasticity for b in B]),
        reference_price=np.array([b.reference_price_usd_per_kg for b in B]),
        reservation_price=np.array([b.reservation_price_usd_per_kg for b in B]),
        inventory_target_months=np.array([b.inventory_target_months for b in B]),
        security_premium_share=np.array([b.security_premium_share for b in B]),
        min_compliant_share=np.array([b.min_compliant_share for b in B]),
        switching_cost=np.array([b.switching_cost_usd_per_kg for b in B]),
        substitution_threshold=np.array([b.substitution.threshold_multiple for b in B]),
        substitution_rate_per_yr=np.array([b.substitution.max_rate_per_yr for b in B]),
        substitution_recovery=np.array([b.substitution.recovery_share for b in B]),
    )

    layout = Layout(
        countries,
        list(s.elements),
        _reachable_cells(rows, entries, c_index, p_index["concentrate"]),
    )
    stocks = _build_stocks(s, rows, layout, producers, buyers, products, recipe)
    captive = captive_pairs(s, producers.names)
    edges = _build_edges(s, stocks, producers, layout, products, captive, rng)
    # longest transport lead plus the longest licensing delay the schema allows
    slots = int(edges.lead_ticks.max(initial=0)) + round(24 * s.ticks_per_year / 12) + 1
    n_rows = len(stocks.qty_t)
    return World(
        scenario=s,
        layout=layout,
        products=products,
        country_bloc=country_bloc,
        china=c_index[s.china],
        reo_content=reo_content,
        magnet_recipe=recipe,
        producers=producers,
        buyers=buyers,
        stocks=stocks,
        edges=edges,
        transit_t=np.zeros((slots, n_rows)),
        transit_attr_t=[[] for _ in range(slots)],
        reference_price=np.array([s.initial_prices_usd_per_kg[p] for p in products]),
        reserve_rows=reserve_rows,
        captive=captive,
    )


def _reachable_cells(
    rows: list[tuple[int, int, int, int, int]],
    entries: list[tuple[Any, str]],
    c_index: dict[str, int],
    ore: int,
) -> list[tuple[int, int | None]]:
    """The provenance cells material can reach: (mining country, separation country or None).

    A stock row starts as its own country's lot (concentrate unprocessed, anything else
    separated there; the stock seeded before warm-up carries it), and separation moves
    unprocessed material to the plant's country: those cells, and nothing else, can ever
    hold a share. The baseline world of 17 countries keeps 182 of the 306 cells.
    """
    seeds = {(c, None if product == ore else c) for product, _, _, _, c in rows}
    separating = {c_index[e.country] for e, stage in entries if stage == "separation"}
    mined = {m for m, separated in seeds if separated is None}
    return [*seeds, *((m, c) for m in mined for c in separating)]


def _reserve_rows(s: Scenario, add_row, c_index: dict[str, int]) -> tuple[int, int] | None:
    """Stock rows of the strategic reserve (also holds offtake purchases), if the scenario has one.

    The reserve sits in its owner's country (a bloc's first member) for transport and tariffs.
    """
    pol = s.policies
    offtake = [f.product for f in pol.price_floors if f.mechanism == "offtake"]
    if pol.reserve is None and not offtake:
        return None
    product = pol.reserve.product if pol.reserve is not None else offtake[0]
    owner = pol.reserve.owner if pol.reserve is not None else "alliance"
    members = [c for c in s.countries if s.bloc_of(c) == owner]
    country = c_index[owner] if owner in c_index else c_index[(members or list(s.countries))[0]]
    return (
        add_row(product, RESERVE, 0, INPUT, country),
        add_row(product, RESERVE, 0, OUTPUT, country),
    )


def _build_stocks(
    s: Scenario,
    rows: list[tuple[int, int, int, int, int]],
    layout: Layout,
    producers: Producers,
    buyers: Buyers,
    products: list[str],
    recipe: np.ndarray,
) -> Stocks:
    """Stock rows with their initial lot attributes and prices; inventories start empty."""
    table = np.array(rows, dtype=np.int64).reshape(-1, 5)
    product, kind, owner, role, country = table.T
    n = len(table)
    attrs = np.zeros((n, layout.width))
    china = layout.countries.index(s.china)
    prices = np.array([s.initial_prices_usd_per_kg[p] for p in products])
    n_e = len(layout.elements)
    # a fresh lot is homogeneous; the attributes only matter once it holds material. Ore is
    # mined where it is held and not yet separated; anything else was separated there.
    comp = np.zeros((len(products), n_e))  # per product: a lot's composition
    for p, name in enumerate(products):
        if name == "concentrate":
            comp[p] = 1 / n_e  # a plant's ore stock, before it holds any
        elif name == "magnet":
            comp[p] = recipe / recipe.sum()
        else:
            comp[p, layout.elements.index(name.split(":", 1)[1])] = 1
    ore = product == products.index("concentrate")  # per row
    unprocessed = layout.n_countries
    attrs[np.arange(n), layout.origin_cells(country, np.where(ore, unprocessed, country))] = 1.0
    attrs[~ore, layout.processed_cn] = country[~ore] == china
    attrs[:, layout.composition] = comp[product]
    mines = ore & (kind == MINE)
    attrs[mines, layout.composition] = producers.composition[owner[mines]]
    attrs[:, layout.touched_cn] = country == china
    ask = prices[product].astype(float)
    return Stocks(
        product=product,
        owner_kind=kind,
        owner=owner,
        role=role,
        country=country,
        qty_t=np.zeros(n),
        attrs=attrs,
        ask_usd_per_kg=ask.copy(),
        export_ask_usd_per_kg=ask.copy(),
        export_orders_t=np.zeros(n),
        export_sold_t=np.zeros(n),
        expected_price_usd_per_kg=ask.copy(),
        cost_floor_usd_per_kg=np.zeros(n),
        orders_t=np.zeros(n),
        available_t=np.zeros(n),
        sold_t=np.zeros(n),
        bought_t=np.zeros(n),
        desired_t=np.zeros(n),
        expected_sales_t=np.zeros(n),
    )


def _transport_tables(s: Scenario, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Country × country transport cost (US$/kg) and lead time (ticks)."""
    countries = layout.countries
    n = len(countries)
    cost = np.zeros((n, n))
    lead = np.zeros((n, n), dtype=np.int64)
    per_tick = s.ticks_per_year / 12.0
    regions = [s.countries[c].region for c in countries]
    t = s.transport
    for i in range(n):
        for j in range(n):
            cls = (
                t.domestic
                if i == j
                else t.regional
                if regions[i] == regions[j]
                else t.intercontinental
            )
            cost[i, j] = cls.cost_usd_per_kg
            lead[i, j] = round(cls.lead_time_months * per_tick)
    for o in t.overrides:
        i, j = countries.index(o.origin), countries.index(o.destination)
        cost[i, j] = o.cost_usd_per_kg
        lead[i, j] = round(o.lead_time_months * per_tick)
    return cost, lead


def captive_pairs(s: Scenario, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Captive supply links from ``sells_to``: (mine, plant) producer indices, one per link."""
    index = {name: i for i, name in enumerate(names)}
    pairs = [
        (index[entry.name], index[plant])
        for entry in [*s.mines, *s.projects]
        for plant in getattr(entry, "sells_to", [])
    ]
    mines, plants = zip(*pairs, strict=True) if pairs else ((), ())
    return np.array(mines, dtype=np.int64), np.array(plants, dtype=np.int64)


def _captive_supply_allows(
    captive: tuple[np.ndarray, np.ndarray],
    n: int,
    stocks: Stocks,
    seller: np.ndarray,
    buyer: np.ndarray,
) -> np.ndarray:
    """Per concentrate edge: allowed by the seller's ``sells_to`` list (empty: any buyer).

    ``captive`` are the (mine, plant) links of :func:`captive_pairs`; ``n`` is the number of
    producers.
    """
    mines, plants = captive
    if len(mines) == 0:
        return np.ones(len(seller), dtype=bool)
    captive = np.zeros(n, dtype=bool)  # per producer: sells only to listed plants
    captive[mines] = True
    seller_owner = stocks.owner[seller]  # per edge: both are producers in this market
    listed = np.isin(seller_owner * n + stocks.owner[buyer], mines * n + plants)
    return ~captive[seller_owner] | listed


def _draw_distinct(n_rows: int, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Per row, ``k < n`` distinct integers of ``[0, n)`` drawn uniformly, sorted (rows × k).

    Draws with replacement and redraws duplicates until none are left; the process treats every
    label alike, so each k-subset is equally likely. Few sellers: random keys, partitioned.
    """
    if n <= 4 * k:
        keys = rng.random((n_rows, n))
        return np.sort(np.argpartition(keys, k - 1, axis=1)[:, :k], axis=1)
    out = np.sort(rng.integers(0, n, (n_rows, k)), axis=1)
    while True:
        duplicate = np.zeros(out.shape, dtype=bool)
        duplicate[:, 1:] = out[:, 1:] == out[:, :-1]
        if not duplicate.any():
            return out
        out[duplicate] = rng.integers(0, n, int(duplicate.sum()))
        out.sort(axis=1)


def _links(
    buy: np.ndarray,
    sell: np.ndarray,
    owner_kind: np.ndarray,
    suppliers_per_buyer: int | None,
    rng: np.random.Generator | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Buyer and seller rows of one market's links, sorted by buyer row, then seller row.

    Every seller to every buyer; or, with ``suppliers_per_buyer = k``, each buyer to ``k``
    producers drawn at random without replacement. The strategic reserve, a policy instrument,
    is linked to every buyer of its product either way.
    """
    k = suppliers_per_buyer
    pool = sell[owner_kind[sell] != RESERVE]  # per candidate producer: stock row
    if k is None or k >= len(pool):
        b_grid, s_grid = np.meshgrid(buy, sell, indexing="ij")
        return b_grid.ravel(), s_grid.ravel()
    if rng is None:
        raise ValueError("network.suppliers_per_buyer needs the model's random generator")
    chosen = pool[_draw_distinct(len(buy), len(pool), k, rng)]  # per buyer × k: stock row
    reserve = sell[owner_kind[sell] == RESERVE]
    if len(reserve):
        chosen = np.sort(np.hstack([chosen, np.tile(reserve, (len(buy), 1))]), axis=1)
    return np.repeat(buy, chosen.shape[1]), chosen.ravel()


def _build_edges(
    s: Scenario,
    stocks: Stocks,
    producers: Producers,
    layout: Layout,
    products: list[str],
    captive: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator | None = None,
) -> Edges:
    """Default rule: every seller row of a product to every buyer row of it.

    With ``network.suppliers_per_buyer`` set, each buyer row is linked to that many sellers
    of its product drawn with ``rng`` instead (see :func:`_links`). Minus what rules forbid at
    build time: a plant never buys its own output, and a mine with a ``sells_to`` list
    (captive supply, e.g. an integrated mine and plant) sells only to those plants.
    """
    cost_table, lead_table = _transport_tables(s, layout)
    sellers_all, buyers_all, slices = [], [], []
    start = 0
    for p in range(len(products)):
        sell = np.flatnonzero((stocks.product == p) & (stocks.role == OUTPUT))
        buy = np.flatnonzero((stocks.product == p) & (stocks.role == INPUT))
        # per edge of this market, sorted by buyer row
        b_flat, s_flat = _links(buy, sell, stocks.owner_kind, s.network.suppliers_per_buyer, rng)
        # a plant never buys its own output (none of the recipes here would allow it anyway)
        keep = ~(
            (stocks.owner_kind[s_flat] == stocks.owner_kind[b_flat])
            & (stocks.owner[s_flat] == stocks.owner[b_flat])
        )
        if p == 0:
            keep &= _captive_supply_allows(captive, len(producers.names), stocks, s_flat, b_flat)
        sellers_all.append(s_flat[keep])
        buyers_all.append(b_flat[keep])
        n = int(keep.sum())
        slices.append(slice(start, start + n))
        start += n
    seller = np.concatenate(sellers_all) if sellers_all else np.zeros(0, np.int64)
    buyer = np.concatenate(buyers_all) if buyers_all else np.zeros(0, np.int64)
    n_edges = len(seller)
    origin, dest = stocks.country[seller], stocks.country[buyer]
    return Edges(
        seller=seller,
        buyer=buyer,
        product=stocks.product[seller],
        seller_country=origin,
        buyer_country=dest,
        transport_usd_per_kg=cost_table[origin, dest],
        base_transport_usd_per_kg=cost_table[origin, dest],
        lead_ticks=lead_table[origin, dest],
        tariff=np.zeros(n_edges),
        duty=np.zeros(n_edges),
        levy_usd_per_kg=np.zeros(n_edges),
        allowed=np.ones(n_edges, dtype=bool),
        flow_t=np.zeros(n_edges),
        last_flow_t=np.zeros(n_edges),
        market_slices=slices,
    )
