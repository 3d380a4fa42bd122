"""RareEarthModel: one Mesa model, and what happens in one tick (MODEL.md §6).

``step()`` reads as the tick's story; each named call is a stage of the staged activation,
acting on every agent of a type at once over the arrays of ``model.world``. Market clearing
itself is the pure code of ``abm.market``; this module wires agents' state into it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import mesa
import networkx as nx
import numpy as np

from abm import invariants, market, metrics, provenance, threads
from abm.agents import (
    KG_PER_T,
    Buyer,
    Mine,
    Processor,
    Producer,
    StrategicReserve,
    planned_offer_t,
)
from abm.levers import resolve as resolve_scenario
from abm.memory import Arena, keep_freed_memory, physical_memory_bytes
from abm.policy import PolicyState
from abm.scenario import Scenario
from abm.world import BLOCS, BUYER, OPERATING, OUTPUT, RESERVE, World, build_world

DEFAULT_SCENARIO = Path(__file__).resolve().parent.parent / "configs" / "baseline.yaml"
# accounts of the closed money system (US$ M): parties that receive money from producers and
# buyers, and the public budgets that pay money out to them
RECEIVED = (
    "reserve_carrying_cost",
    "tariff_revenue",
    "duty_revenue",
    "levy_revenue",
    "floor_upside",
    "transport",
    "operating_costs",
    "capital_goods",
)
PAID = ("floor_subsidy", "strategic_pricing", "offtake_purchases")
# the edge log keeps every edge of a tick, moving or not, when at least this share of edges
# moved: a flow per edge then takes less memory, and less time, than an index and a flow per
# moving edge (8 against 12 bytes)
DENSE_LOG = 2 / 3
# a run whose edge log could take more than this share of the machine's memory gets a warning
LOG_MEMORY_SHARE = 0.25


@dataclass
class _MarketIndex:
    """Local indexing of one product market's edges (built once)."""

    edges: slice
    seller_rows: np.ndarray  # per local seller: stock row
    seller_local: np.ndarray  # per edge: local seller
    buyer_rows: np.ndarray  # per local buyer: stock row
    buyer_local: np.ndarray  # per edge: local buyer
    buyer_starts: np.ndarray  # per local buyer: its first edge (edges run by buyer)
    buyer_lengths: np.ndarray  # per local buyer: its number of edges
    seller_accounts: np.ndarray  # per local seller: its owner's account (distinct)
    buyer_accounts: np.ndarray  # per local buyer: its owner's account (distinct)
    routes: provenance.Routes | None = None  # shipping: (lead time, buyer) ← seller, per edge
    routes_lead: np.ndarray | None = None  # per edge: the lead times ``routes`` was built for
    routes_delayed: bool = False  # ``routes_lead`` includes licensing delays
    legs: list[tuple[int, slice, np.ndarray]] | None = None  # per lead time: destinations, rows
    shipped: list[np.ndarray | None] | None = None  # ``routes`` outputs, reused in turn
    sales_by_seller: provenance.GroupSums | None = None  # sums per local seller of edge products

    def per_buyer(self, per_edge: np.ndarray) -> np.ndarray:
        """Per local buyer: the sum of a per-edge quantity over its edges."""
        return np.add.reduceat(per_edge, self.buyer_starts)

    def to_edges(self, per_buyer: np.ndarray) -> np.ndarray:
        """Per edge: its buyer's value of a per-local-buyer quantity."""
        return per_buyer.repeat(self.buyer_lengths)


class RareEarthModel(mesa.Model):
    """The rare-earth market: mines, processors and buyers trading on a network.

    Args:
        scenario: a validated :class:`~abm.scenario.Scenario`, or a path to a scenario file;
            default: ``configs/baseline.yaml``.
        rng: seed or numpy Generator for every random draw of the model.
        overrides: dotted paths (or lever names) to values, or ``"key=value"`` strings.
        **levers: flat levers of :mod:`abm.levers` (``tariff_rate=0.25``, ``logit_beta=12``);
            every argument is optional and keyword-only but ``scenario``, so
            ``mesa.batch_run(RareEarthModel, parameters={...}, rng=[...])`` works.

    Attributes:
        check_invariants: check every tick that no stock, price or balance has gone wrong
            (:mod:`abm.invariants`; a few percent of a tick). Set to ``False`` on the class or
            on a model to skip it.

    """

    check_invariants: bool = True

    def __init__(
        self,
        scenario: Scenario | str | Path | None = None,
        *,
        rng: Any = None,
        overrides: dict[str, Any] | list[str] | None = None,
        **levers: Any,
    ) -> None:
        super().__init__(rng=rng)
        keep_freed_memory()  # ticks reuse the last tick's memory (see abm.memory)
        threads.count()  # a bad ABM_THREADS is named now, not in the middle of a run
        scenario = resolve_scenario(
            DEFAULT_SCENARIO if scenario is None else scenario, overrides, **levers
        )
        self.config = scenario
        self.world: World = build_world(scenario, self.rng)
        # one stream per kind of draw, so a policy that adds draws of one kind (licences)
        # leaves the others (sellers' price noise) as they were: paired runs stay paired
        self.price_rng, self.licence_rng = self.rng.spawn(2)
        self.tick = 0
        self._init_accounts()
        self.row_account = self._row_accounts()
        self._markets = [self._index_market(sl) for sl in self.world.edges.market_slices]
        self._merge = provenance.Merge()  # how arrivals group, kept per combination of legs
        w = self.world
        self._abroad = (w.edges.buyer_country != w.china).astype(float)  # per edge
        self._init_buyer_terms()
        self.expected_market_price = self.world.reference_price.copy()
        self.expected_price_abroad = self.world.reference_price.copy()  # buyers outside China
        self.long_run_price = self.world.reference_price.copy()  # investors' view, per product
        self.long_run_price_abroad = self.world.reference_price.copy()
        self.typical_ore_composition = self._typical_ore()
        self.concentrate_price_per_basket_value = self._initial_netback()
        self._price_scale = self._logit_price_scale()
        self.producer_agents = [
            (Mine if stage == 0 else Processor)(self, i)
            for i, stage in enumerate(self.world.producers.stage)
        ]
        self.buyer_agents = [Buyer(self, j) for j in range(len(self.world.buyers.names))]
        self.reserve = StrategicReserve(self)
        self.policy = PolicyState(self)
        self.policy.refresh()
        self._row_agent = self._row_agents()  # per stock row: the agent that owns it
        self._graph: nx.MultiDiGraph | None = None  # built on first use of ``network``
        self.flow_log: list[dict[str, Any]] = []  # per tick: its tick and per-flow columns
        self._flow_arena = Arena()  # where the edge log's columns are kept (abm.memory)
        # per stock row: the ask it quoted when its market last cleared (kept for the edge log)
        self.row_quoted_ask = np.zeros(len(self.world.stocks.qty_t))
        # this tick's edges whose ask a policy set apart from their seller's quote: (edges, asks)
        self._asks_changed: list[tuple[np.ndarray, np.ndarray]] = []
        self._warn_of_a_large_edge_log()
        self.consumption_log: list[dict[str, np.ndarray]] = []  # per tick: consumption origin
        self._seed_stocks(scenario.market.warmup_ticks)
        self._begin_tick()
        self.tick_profit = np.zeros(len(self.world.producers.names))
        self._warm_up(scenario.market.warmup_ticks)
        self.datacollector = metrics.Collector(model_reporters=metrics.reporters(self))
        self.datacollector.collect(self)

    # ------------------------------------------------------------------ the tick

    def step(self) -> None:
        """One tick, in the order of MODEL.md §6."""
        self.tick += 1
        self._begin_tick()
        self._apply_policies()  # 1–2: events and policy terms on edges
        Producer.commission(self)  # new capacity comes online
        self.effective_capacity = Producer.effective_capacity_t(self)
        Mine.produce(self)  # 3: mines produce
        self._arrive_shipments()  # 3: shipments whose lead time elapsed
        Buyer.adapt_demand(self)
        Buyer.plan_orders(self)
        StrategicReserve.plan(self)
        for product in range(len(self.world.products)):  # 4: markets in supply-chain order
            Processor.plan_inputs(self, product)
            StrategicReserve.offtake(self, product)
            self._clear_market(product)
            if product == 0:
                Processor.separate(self)
            if self._is_last_oxide(product):
                Processor.make_magnets(self)
        self.consumed_attr_t = Buyer.consume(self)  # 5: consumption and shortage
        self._update_prices()  # 6: asks and expectations
        StrategicReserve.carry(self)
        self._settle()  # 7: costs and profits
        Producer.review_operations(self)  # idling, restarts, closures
        if self._investment_tick():
            Producer.invest(self)  # 8: investment, entry, exit
        if self.check_invariants:
            invariants.check(self)  # no NaN, negative stock or broken balance goes unnoticed
        if not self.warming_up:
            self._collect()  # 9: metrics

    def _collect(self) -> None:
        """This tick's metrics, then its flow log.

        A world large enough to split its work among threads keeps the log on a thread of its
        own while the metrics are collected (:func:`abm.threads.beside`): both only read the
        tick's state, and each writes its own records, so the records are the same.
        """
        if threads.n_threads(len(self.world.edges.seller)) == 1:
            self.datacollector.collect(self)
            self._log_flows()
            return
        metrics.open_tables(self)  # this tick's tables, shared by both threads
        logged = threads.beside(self._log_flows)
        try:
            self.datacollector.collect(self)
        finally:
            logged.result()

    # ------------------------------------------------------------------ set-up

    def _init_accounts(self) -> None:
        self.accounts = dict.fromkeys(RECEIVED + PAID, 0.0)
        self.mined_t_total = 0.0
        self.separation_losses_t_total = 0.0
        self.consumed_reo_t_total = 0.0
        self.initial_reo_t = 0.0
        self.entries_total = 0
        self.exits_total = 0
        self.capex_paid_usd_million = 0.0
        self.warming_up = False
        n_rows = len(self.world.stocks.qty_t)
        self.in_transit_t = np.zeros(n_rows)
        self.effective_capacity = np.zeros(len(self.world.producers.names))
        self.consumed_attr_t = np.zeros((len(self.world.buyers.names), self.world.layout.width))
        self.tick_fiscal = dict.fromkeys(self.accounts, 0.0)
        self.last_cn_separation_share = 1.0
        self.last_shortage = dict.fromkeys(BLOCS, 0.0)
        self.last_reserve_shortage = 0.0  # the reserve owner's shortage of its product

    def _row_accounts(self) -> np.ndarray:
        """Per stock row: the account its owner pays from and is paid into.

        Accounts: producers first, then buyers, then the reserve (last).
        """
        s = self.world.stocks
        n_p, n_b = len(self.world.producers.names), len(self.world.buyers.names)
        offset = np.array([0, 0, n_p, n_p + n_b])  # by owner kind: mine, processor, buyer, reserve
        return offset[s.owner_kind] + np.where(s.owner_kind == RESERVE, 0, s.owner)

    def _index_market(self, edges: slice) -> _MarketIndex:
        e = self.world.edges
        seller_rows, seller_local = np.unique(e.seller[edges], return_inverse=True)
        buyer_rows, buyer_local = np.unique(e.buyer[edges], return_inverse=True)
        # edges are stored sorted by buyer row, so each buyer's edges form one run
        buyer_starts = provenance.run_starts(buyer_local)
        buyer_lengths = provenance.run_lengths(buyer_starts, len(buyer_local))
        seller_accounts = self.row_account[seller_rows]
        buyer_accounts = self.row_account[buyer_rows]
        for side in (seller_accounts, buyer_accounts):  # each owner has one row per product
            if len(np.unique(side)) != len(side):
                raise ValueError(f"two stock rows of one owner in the market of {edges}")
        return _MarketIndex(
            edges,
            seller_rows,
            seller_local,
            buyer_rows,
            buyer_local,
            buyer_starts,
            buyer_lengths,
            seller_accounts,
            buyer_accounts,
            sales_by_seller=provenance.GroupSums(seller_local, len(seller_rows)),
        )

    def _init_buyer_terms(self) -> None:
        """Per stock row: the buying terms of its owner (processors buy without premium)."""
        n_rows = len(self.world.stocks.qty_t)
        b = self.world.buyers
        self.row_reservation = np.full(n_rows, np.inf)
        self.row_premium_share = np.zeros(n_rows)
        self.row_min_compliant = np.zeros(n_rows)
        self.row_switching = np.zeros(n_rows)
        self.row_reservation[b.row] = b.reservation_price
        self.row_premium_share[b.row] = b.security_premium_share
        self.row_min_compliant[b.row] = b.min_compliant_share
        self.row_switching[b.row] = b.switching_cost

    def _typical_ore(self) -> np.ndarray:
        """Capacity-weighted ore composition of built mines: the separation planning basis."""
        p = self.world.producers
        mines = (p.stage == 0) & (p.capacity_t_per_yr > 0)
        if not mines.any():
            mines = p.stage == 0
        weights = np.maximum(p.capacity_t_per_yr[mines], 1e-9)
        return (p.composition[mines] * weights[:, None]).sum(axis=0) / weights.sum()

    def _logit_price_scale(self) -> np.ndarray:
        """Per product: the price that makes the logit's β dimensionless.

        Each product's initial price; for concentrate, whose offers are ranked by margin, the
        oxide value of the typical ore at initial prices (the scale margins vary on).
        """
        n_e = len(self.world.layout.elements)
        scale = self.world.reference_price.copy()
        scale[0] = self.typical_ore_composition @ self.world.reference_price[1 : 1 + n_e]
        return scale

    def _initial_netback(self) -> float:
        """Initial concentrate price per US$ of contained oxide value."""
        n_e = len(self.world.layout.elements)
        basket = self.typical_ore_composition @ self.world.reference_price[1 : 1 + n_e]
        return float(self.world.reference_price[0] / max(basket, 1e-9))

    def months_to_ticks(self, months: float) -> float:
        """Convert a duration in months to ticks."""
        return months * self.config.ticks_per_year / 12.0

    def _seed_stocks(self, warmup_ticks: int) -> None:
        """Start every stock at its target, so the warm-up begins near a steady state."""
        w, p, s, cfg = self.world, self.world.producers, self.world.stocks, self.config.market
        self.tick = -warmup_ticks
        cap = p.capacity_t_per_yr / self.config.ticks_per_year * p.initial_utilisation
        n_e = len(w.layout.elements)
        yields = np.ones((len(p.names), len(w.products)))  # per producer × product
        yields[:, 1 : 1 + n_e] = self.typical_ore_composition * p.recovery
        has_out = p.output_rows >= 0
        rows = p.output_rows[has_out]
        per_tick = (cap[:, None] * yields)[has_out]
        s.expected_sales_t[rows] = per_tick
        s.qty_t[rows] = 0.5 * self.months_to_ticks(cfg.stock_cover_months) * per_tick
        coef = np.ones(len(w.products))
        coef[1 : 1 + n_e] = np.where(w.magnet_recipe > 0, w.magnet_recipe, 1.0)
        has_in = p.input_rows >= 0
        concentrate_in = p.input_rows[:, 0][p.input_rows[:, 0] >= 0]
        s.attrs[np.ix_(concentrate_in, np.arange(w.layout.width)[w.layout.composition])] = (
            self.typical_ore_composition
        )
        s.qty_t[p.input_rows[has_in]] = (
            self.months_to_ticks(cfg.input_cover_months) * cap[:, None] * coef
        )[has_in]
        Buyer.adapt_demand(self)
        b = w.buyers
        s.qty_t[b.row] = b.need_t * self.months_to_ticks(b.inventory_target_months)

    def _warm_up(self, ticks: int) -> None:
        """Run ``ticks`` ticks before the start so stocks, pipelines and provenance settle.

        The scenario's standing ``policies`` are in force during warm-up (they describe the
        world as it is at the start); dated ``events`` are not, investment is off, and the
        reserve and offtake purchases do not act. Afterwards the clock, cash, budgets and
        cumulative totals are reset, and the stock on hand becomes the initial mass of the
        balance.
        """
        self.warming_up = True
        self.tick = -ticks
        self.effective_capacity = Producer.effective_capacity_t(self)
        for _ in range(ticks):
            type(self).step(self)  # the tick itself, not Mesa's wrapper: its clock stays at 0
        self.warming_up = False
        self.policy.strategic_spent_usd_million = 0.0
        self.tick = 0
        self.world.producers.cash_usd_million[:] = 0.0
        self.world.buyers.cash_usd_million[:] = 0.0
        self.reserve.cash_usd_million = 0.0
        self.reserve.spent_usd_million = 0.0
        StrategicReserve.seed(self)
        self._init_accounts_after_warmup()

    def _init_accounts_after_warmup(self) -> None:
        for name in self.accounts:
            self.accounts[name] = 0.0
        self.mined_t_total = 0.0
        self.separation_losses_t_total = 0.0
        self.consumed_reo_t_total = 0.0
        self.entries_total = 0
        self.exits_total = 0
        self.capex_paid_usd_million = 0.0
        self.initial_reo_t = self.reo_in_system_t()
        self.tick_fiscal = dict.fromkeys(self.accounts, 0.0)

    def _row_agents(self) -> list[mesa.Agent]:
        s = self.world.stocks
        owners = {BUYER: self.buyer_agents, RESERVE: [self.reserve]}
        return [
            owners.get(kind, self.producer_agents)[owner]
            for kind, owner in zip(
                s.owner_kind.tolist(),
                np.where(s.owner_kind == RESERVE, 0, s.owner).tolist(),
                strict=True,
            )
        ]

    def _build_network(self) -> nx.MultiDiGraph:
        """Agents as nodes, trade links as edges keyed by product (MODEL.md §5).

        Built when ``network`` is first read, not with the model: a world of 100,000 buyers
        has millions of links, and most runs never look at the graph.
        """
        w, e = self.world, self.world.edges
        graph = nx.MultiDiGraph()
        agents = [*self.producer_agents, *self.buyer_agents]
        if self.reserve.rows is not None:
            agents.append(self.reserve)
        for agent in agents:
            stage = (
                agent.stage
                if isinstance(agent, Producer)
                else "reserve"
                if agent is self.reserve
                else "buyer"
            )
            graph.add_node(
                agent.name,
                kind=type(agent).__name__,
                country=agent.country,
                stage=stage,
                agent=agent,
            )
        names = np.array([agent.name for agent in self._row_agent], dtype=object)  # per row
        products = np.array(w.products, dtype=object)
        graph.add_edges_from(
            zip(
                names[e.seller].tolist(),
                names[e.buyer].tolist(),
                products[e.product].tolist(),
                ({"edge_index": i} for i in range(len(e.seller))),
                strict=False,
            )
        )
        return graph

    @property
    def network(self) -> nx.MultiDiGraph:
        """The trade network with current terms and last tick's flows on every edge."""
        w, e = self.world, self.world.edges
        china = w.china
        if self._graph is None:
            self._graph = self._build_network()
        for *_, data in self._graph.edges(data=True):
            i = data["edge_index"]
            data.update(
                transport_usd_per_kg=float(e.transport_usd_per_kg[i]),
                lead_time_ticks=int(e.lead_ticks[i]),
                tariff=float(e.tariff[i]),
                duty=float(e.duty[i]),
                levy_usd_per_kg=float(e.levy_usd_per_kg[i]),
                allowed=bool(e.allowed[i]),
                flow_t=float(e.flow_t[i]),
                through_china=bool(e.seller_country[i] == china or e.buyer_country[i] == china),
            )
        for _, data in self._graph.nodes(data=True):
            data["bloc"] = data["agent"].bloc
        return self._graph

    # ------------------------------------------------------------------ stages

    def _begin_tick(self) -> None:
        s = self.world.stocks
        s.orders_t[:] = 0.0
        s.export_orders_t[:] = 0.0
        s.export_sold_t[:] = 0.0
        s.available_t[:] = 0.0
        s.sold_t[:] = 0.0
        s.bought_t[:] = 0.0
        s.desired_t[:] = 0.0
        self.world.producers.output_t[:] = 0.0
        self.tick_fiscal = dict.fromkeys(self.accounts, 0.0)
        n_accounts = len(self.world.producers.names) + len(self.world.buyers.names) + 1
        self.tick_in = np.zeros(n_accounts)  # per account: sales and subsidies received
        self.tick_out = np.zeros(n_accounts)  # per account: purchases paid, all-in
        self.tick_opex = np.zeros(len(self.world.producers.names))
        self.tick_buyer_spend = np.zeros(len(self.world.buyers.names))
        e = self.world.edges
        e.last_flow_t = e.flow_t
        e.flow_t = np.zeros_like(e.flow_t)
        self.edge_ask = np.zeros_like(e.flow_t)
        self.edge_landed = np.zeros_like(e.flow_t)
        self._asks_changed = []

    def _apply_policies(self) -> None:
        """Dated events apply or expire; policy rules become edge terms (§6 steps 1–2)."""
        if not self.warming_up:
            self.policy.apply_events()
        self.policy.refresh()
        self.policy.update_strategic_pricing(1.0 - self.last_cn_separation_share)

    def _arrive_shipments(self) -> None:
        """Shipments due this tick arrive (the transit buffer is a ring over ticks)."""
        w = self.world
        slot = self.tick % len(w.transit_t)
        shipments = w.transit_attr_t[slot]
        if not shipments:
            return
        if len(shipments) > 1:  # mixed at once, as if their lots came one after another
            arrived = self._merge.mix_into(w.stocks.qty_t, w.stocks.attrs, shipments)
        else:
            rows, qty, mass = shipments[0]
            provenance.mix_into(w.stocks.qty_t, w.stocks.attrs, rows, qty, mass)
            arrived = np.unique(rows[qty > 0])
        w.transit_t[slot, arrived] = 0.0
        w.transit_attr_t[slot] = []
        self.in_transit_t[arrived] = w.transit_t[:, arrived].sum(axis=0)

    def _concentrate_value(self, m: _MarketIndex) -> np.ndarray:
        """Per edge: oxide value a plant expects from a kg of the seller's ore, net of processing.

        The margin ranking of concentrate offers, MODEL.md §7.1.
        """
        w, s, p = self.world, self.world.stocks, self.world.producers
        n_e = len(w.layout.elements)
        plants = s.owner[m.buyer_rows]  # per local buyer
        out = p.output_rows[plants, 1 : 1 + n_e]  # per plant × element
        oxide_price = np.where(out >= 0, s.expected_price_usd_per_kg[np.maximum(out, 0)], 0.0)
        ores = s.attrs[m.seller_rows, w.layout.composition]  # per local seller × element
        plant = m.buyer_local  # per edge: local buyer
        gross = ores[m.seller_local] * p.recovery[plants][plant] * oxide_price[plant]
        return gross.sum(axis=1) - p.unit_cost_usd_per_kg[plants][plant]  # per edge

    def _clear_market(self, product: int) -> None:
        """Clear one product market (MODEL.md §7.1) and ship, pay and record the flows."""
        s, e = self.world.stocks, self.world.edges
        m = self._markets[product]
        sl = m.edges
        if sl.stop == sl.start:
            return
        sellers = e.seller[sl]  # per edge: stock rows
        controlled = self.policy.export_group[sl] >= 0  # per edge: quota or licence applies
        any_controlled = bool(controlled.any())
        quoted = s.ask_usd_per_kg[m.seller_rows]  # per local seller: the ask it quotes
        own_ask = quoted_ask = quoted[m.seller_local]  # per edge, via its seller
        if any_controlled:
            own_ask = np.where(controlled, s.export_ask_usd_per_kg[sellers], own_ask)
        strategic_ask = own_ask  # per edge: China's strategic export asks, paid by its budget
        if self.policy.strategic_active:
            strategic_ask = self.policy.export_asks(sl, own_ask, self._cost_floor(sellers))
        compliant = self.compliant_rows(m.seller_rows)[m.seller_local]  # per edge
        ask = self.policy.minimum_asks(sl, product, strategic_ask, compliant)
        e.levy_usd_per_kg[sl] = self.policy.border_levy(sl, product, ask, compliant)
        landed = market.landed_cost(
            ask, e.duty[sl], e.tariff[sl], e.levy_usd_per_kg[sl], e.transport_usd_per_kg[sl], 0.0
        )
        rank = landed  # per edge: what buyers rank offers by
        premium = self.row_premium_share[m.buyer_rows]  # per local buyer
        if premium.any():  # a security premium on CN-touched lots
            rank = rank + np.where(compliant, 0.0, m.to_edges(premium) * ask)
        switching = self.row_switching[m.buyer_rows]  # per local buyer
        if switching.any():  # a switching cost toward new sellers
            rank = rank + np.where(e.last_flow_t[sl] > 0, 0.0, m.to_edges(switching))
        eligible = e.allowed[sl] & (landed <= m.to_edges(self.row_reservation[m.buyer_rows]))
        if any_controlled:  # licences are drawn for controlled edges only
            eligible &= self.policy.licensed(sl)
        if product == 0:
            value = self._concentrate_value(m)
            rank = rank - value
            eligible &= value - landed >= 0
        available = s.qty_t[m.seller_rows].copy()
        cfg = self.config.market
        result = market.clear(
            rank,
            m.seller_local,
            m.buyer_local,
            eligible,
            compliant,
            s.desired_t[m.buyer_rows],
            self.row_min_compliant_in_force(m.buyer_rows),
            available,
            cfg.logit_beta,
            self._price_scale[product],
            cfg.rationing_rounds,
            group=self.policy.export_group[sl] if any_controlled else None,
            group_cap=self.policy.quota_left_t,
            buyer_starts=m.buyer_starts,
        )
        flow = result.flow  # per edge
        if any_controlled:
            asked = flow + result.unfilled  # per edge: each tonne asked for, counted once
            self.policy.record_export_orders(sl, asked)
        self.policy.pass_on_unused_quota(product)
        sold = np.bincount(m.seller_local, flow, minlength=len(m.seller_rows))
        bought = m.per_buyer(flow)
        s.qty_t[m.seller_rows] = np.maximum(s.qty_t[m.seller_rows] - sold, 0.0)
        s.available_t[m.seller_rows] = planned_offer_t(self, m.seller_rows)
        # a seller's (domestic) ask answers the orders it could serve; export orders rationed
        # away by a quota drive its export ask instead (two-tier prices, §8)
        n_s = len(m.seller_rows)
        export_orders, export_sold, export_orders_all_rounds = np.zeros((3, n_s))  # per seller
        if any_controlled:
            local = m.seller_local[controlled]
            export_orders = np.bincount(local, asked[controlled], minlength=n_s)
            export_sold = np.bincount(local, flow[controlled], minlength=n_s)
            export_orders_all_rounds = np.bincount(
                local, result.edge_orders[controlled], minlength=n_s
            )
        s.orders_t[m.seller_rows] = result.orders - export_orders_all_rounds + export_sold
        s.export_orders_t[m.seller_rows] = export_orders
        s.export_sold_t[m.seller_rows] = export_sold
        s.sold_t[m.seller_rows] = sold
        s.bought_t[m.buyer_rows] = bought
        e.flow_t[sl] = flow
        self.edge_ask[sl] = ask
        self.edge_landed[sl] = landed
        if self.config.flow_log == "edges":  # the log keeps quoted asks and their exceptions
            self.row_quoted_ask[m.seller_rows] = quoted
            if ask is not quoted_ask:  # some policy moved some edges' asks
                changed = np.flatnonzero(ask != quoted_ask)
                self._asks_changed.append((changed + sl.start, ask[changed]))
        self._ship(m, flow, self.policy.extra_lead(sl) if any_controlled else None)
        self._pay(m, flow, ask, landed)
        self._pay_policy(product, m, flow, own_ask, strategic_ask, ask, compliant)
        self._update_buyer_expectations(m, flow, bought, landed, eligible)

    def compliant_rows(self, rows: np.ndarray) -> np.ndarray:
        """Per stock row: its lot counts as compliant under the rules in force."""
        de_minimis = self.config.policies.compliance.de_minimis_share
        touched = self.world.stocks.attrs[rows, self.world.layout.touched_cn]  # one cell a row
        return provenance.within_de_minimis(touched, de_minimis)

    def bloc_of_party(self, party: str) -> str:
        """The bloc a party (bloc or country code) belongs to."""
        return party if party in BLOCS else self.config.bloc_of(party)

    def owner_landed_price(self, party: str, product: int) -> float:
        """Expected landed price of a product for a party's buyers (weighted by their orders)."""
        from abm.policy import party_mask

        s = self.world.stocks
        rows = np.flatnonzero((s.product == product) & (s.role == 1) & (s.owner_kind != RESERVE))
        rows = rows[party_mask(party, s.country[rows], self)]
        if len(rows) == 0:
            return float(self.expected_market_price[product])
        weight = s.desired_t[rows] + 1e-12
        return float((s.expected_price_usd_per_kg[rows] * weight).sum() / weight.sum())

    def row_min_compliant_in_force(self, rows: np.ndarray) -> np.ndarray:
        """Per buyer row: its compliance requirement, raised to the alliance's rule if a member.

        The alliance rule applies to end buyers in alliance countries, not to processors.
        """
        w, s = self.world, self.world.stocks
        rule = self.config.policies.compliance.min_compliant_share
        if rule <= 0:  # no alliance rule: each buyer's own requirement (never negative)
            return self.row_min_compliant[rows]
        member = (s.owner_kind[rows] == BUYER) & (
            w.country_bloc[s.country[rows]] == BLOCS.index("alliance")
        )
        return np.where(
            member, np.maximum(self.row_min_compliant[rows], rule), self.row_min_compliant[rows]
        )

    def _pay_policy(
        self,
        product: int,
        m: _MarketIndex,
        flow: np.ndarray,
        own_ask: np.ndarray,
        strategic_ask: np.ndarray,
        ask: np.ndarray,
        compliant: np.ndarray,
    ) -> None:
        """Floor subsidies and upside (alliance), strategic-pricing top-ups (China's budget).

        ``own_ask − strategic_ask`` is per edge how far China's strategic export ask is below
        the seller's own ask (US$/kg); China's budget pays it to the seller.
        """
        payments = self.policy.floor_payments(product, flow, ask, compliant)
        if payments is not None:
            net, subsidy, upside = payments
            self._credit_sellers(m, net)
            self.tick_fiscal["floor_subsidy"] += subsidy
            self.tick_fiscal["floor_upside"] += upside
        if not self.policy.strategic_active:
            return
        topup = flow / KG_PER_T * (own_ask - strategic_ask)  # per edge
        if topup.any():
            self._credit_sellers(m, topup)
            self.tick_fiscal["strategic_pricing"] += topup.sum()
            self.policy.strategic_spent_usd_million += topup.sum()

    def _credit_sellers(self, m: _MarketIndex, per_edge: np.ndarray) -> None:
        """Add a per-edge payment (US$ M) to the sellers' receipts this tick."""
        per_seller = np.bincount(m.seller_local, per_edge, minlength=len(m.seller_rows))
        self.tick_in[m.seller_accounts] += per_seller  # one seller row per account in a market

    def _ship(self, m: _MarketIndex, flow: np.ndarray, extra_lead: np.ndarray | None) -> None:
        """Deliver now (lead time 0) or put in transit (per edge: lead time + licensing delay)."""
        w, e = self.world, self.world.edges
        n_rows = len(w.stocks.qty_t)
        lead = e.lead_ticks[m.edges]  # per edge (the world's lead times never change)
        delayed = extra_lead is not None and bool(extra_lead.any())
        if delayed:
            lead = lead + extra_lead
        if m.routes is None or (
            (delayed or m.routes_delayed) and not np.array_equal(lead, m.routes_lead)
        ):
            # shipments keyed by (lead time, receiving row): one sparse product for all leads
            keys = lead * n_rows + e.buyer[m.edges]  # per edge
            m.routes, m.routes_lead = provenance.Routes(keys, e.seller[m.edges], n_rows), lead
            m.routes_delayed = delayed
            lead_ticks, receiving = np.divmod(m.routes.dest, n_rows)  # per destination
            starts = [0, *(np.flatnonzero(np.diff(lead_ticks)) + 1).tolist(), len(lead_ticks)]
            m.legs = [
                (int(lead_ticks[start]), slice(start, stop), receiving[start:stop])
                for start, stop in pairwise(starts)
                if start < stop
            ]
            m.shipped = [None] * (m.legs[-1][0] + 1 if m.legs else 1)
        # the attribute mass shipped goes into the array used the longest lead time + 1 ticks
        # ago: what was shipped in it has arrived, and its pages are already the process's (a
        # new array of this size costs a page fault per page)
        reuse = self.tick % len(m.shipped)
        qty, mass = m.routes.inflows(flow, w.stocks.attrs, m.shipped[reuse])
        m.shipped[reuse] = mass  # per (lead time, receiving row)
        for ticks, leg, rows in m.legs:
            if ticks == 0:
                provenance.mix_into(w.stocks.qty_t, w.stocks.attrs, rows, qty[leg], mass[leg])
                continue
            # rows nothing is sent to ride along (adding zero changes nothing; arrival skips
            # them), so the shipment is a view of ``mass``, not a copy
            slot = (self.tick + ticks) % len(w.transit_t)
            w.transit_t[slot, rows] += qty[leg]
            w.transit_attr_t[slot].append((rows, qty[leg], mass[leg]))
            self.in_transit_t[rows] += qty[leg]  # recounted exactly when it arrives

    def _pay(self, m: _MarketIndex, flow: np.ndarray, ask: np.ndarray, landed: np.ndarray) -> None:
        """Buyers pay the landed cost: the ask to the seller, duty, tariff, levy, transport."""
        e, sl = self.world.edges, m.edges
        to_money = flow / KG_PER_T  # t × US$/kg → US$ million, per edge
        # per seller, the sales (to_money · ask) summed edge by edge
        self.tick_in[m.seller_accounts] += m.sales_by_seller.of(to_money, ask)
        self.tick_out[m.buyer_accounts] += m.per_buyer(to_money * landed)  # one row per account
        duty, tariff, levy = e.duty[sl], e.tariff[sl], e.levy_usd_per_kg[sl]  # per edge
        has_duty, has_tariff = bool(duty.any()), bool(tariff.any())
        if has_duty or has_tariff:
            sales = to_money * ask  # per edge, US$ M
            if has_duty:
                self.tick_fiscal["duty_revenue"] += float((sales * duty).sum())
            if has_tariff:
                self.tick_fiscal["tariff_revenue"] += float((sales * (1 + duty) * tariff).sum())
        if levy.any():
            self.tick_fiscal["levy_revenue"] += float((to_money * levy).sum())
        self.tick_fiscal["transport"] += float((to_money * e.transport_usd_per_kg[sl]).sum())

    def charge_opex(self, producers: np.ndarray, usd_million: np.ndarray) -> None:
        """Record operating costs (paid to the outside economy) of some producers."""
        np.add.at(self.tick_opex, producers, usd_million)
        self.tick_fiscal["operating_costs"] += usd_million.sum()

    def _update_buyer_expectations(
        self,
        m: _MarketIndex,
        flow: np.ndarray,
        bought: np.ndarray,
        landed: np.ndarray,
        eligible: np.ndarray,
    ) -> None:
        """Buyers expect what they paid (volume-weighted), or the cheapest offer if nothing.

        Concentrate is the exception: a kg of one ore is not a kg of another, so a plant that
        bought nothing keeps its expectation (the price per kg of the ores it buys).
        ``bought`` is per local buyer the tonnes of ``flow`` (per edge).
        """
        s = self.world.stocks
        paid = m.per_buyer(flow * landed)
        some = bought > market.TINY * max(float(bought.sum()), 1e-300)  # scale-free "bought"
        observed = paid / np.maximum(bought, 1e-300)
        if not some.all():
            cheapest = np.full(len(m.buyer_rows), np.inf)
            if self.world.edges.product[m.edges.start] != 0:
                offers = landed if eligible.all() else np.where(eligible, landed, np.inf)
                cheapest = np.minimum.reduceat(offers, m.buyer_starts)
            observed = np.where(some, observed, cheapest)
        current = s.expected_price_usd_per_kg[m.buyer_rows]
        observed = np.where(np.isfinite(observed), observed, current)
        s.expected_price_usd_per_kg[m.buyer_rows] = market.smooth(
            current, observed, self.config.market.expectation_smoothing
        )

    def _update_prices(self) -> None:
        """Sellers move asks with excess demand (§7.2); expectations follow (smoothing)."""
        w, s, cfg = self.world, self.world.stocks, self.config.market
        out = np.flatnonzero(s.role == OUTPUT)
        floor = (1.0 - cfg.loss_tolerance) * self._cost_floor(out)
        floor = self.policy.subsidised_ask_floor(out, floor)
        # asks stay positive: a seller with no cost floor (zero cost, or a loss tolerance of 1)
        # would otherwise decay to zero and, multiplicatively, stay there
        floor = np.maximum(floor, 1e-9 * w.reference_price[s.product[out]])
        ask = market.adjust_asks(
            s.ask_usd_per_kg[out], s.orders_t[out], s.available_t[out], cfg.price_adjustment, floor
        )
        if cfg.price_noise > 0:
            # producers' rows only, drawn in row order: a reserve's row (appended last) takes no
            # draw, so runs with and without a reserve share their random numbers (paired runs)
            noisy = s.owner_kind[out] != RESERVE
            draws = self.price_rng.normal(0.0, cfg.price_noise, int(noisy.sum()))
            ask[noisy] = np.maximum(ask[noisy] * np.exp(draws), floor[noisy])
        s.ask_usd_per_kg[out] = ask
        s.export_ask_usd_per_kg[out] = market.adjust_export_asks(
            s.export_ask_usd_per_kg[out],
            ask,
            s.export_orders_t[out],
            s.export_sold_t[out],
            cfg.price_adjustment,
        )
        s.expected_sales_t[out] = market.smooth(
            s.expected_sales_t[out], s.sold_t[out], cfg.expectation_smoothing
        )
        s.expected_price_usd_per_kg[out] = market.smooth(
            s.expected_price_usd_per_kg[out], ask, cfg.expectation_smoothing
        )
        # market-wide expected prices: volume-weighted transaction prices, smoothed
        e = w.edges
        trade = metrics.world_trade(self)  # flows and asks are final for the tick
        flow, sales, volume, value = e.flow_t, trade["sales"], trade["volume"], trade["value"]
        traded = volume > 0
        observed = np.where(traded, value / np.maximum(volume, 1e-300), self.expected_market_price)
        self.expected_market_price = market.smooth(
            self.expected_market_price, observed, cfg.expectation_smoothing
        )
        abroad = self._abroad  # per edge: 1 where the buyer is outside China
        volume, value = (
            metrics.per_product(self, flow * abroad),
            metrics.per_product(self, sales * abroad),
        )
        observed = np.where(
            volume > 0, value / np.maximum(volume, 1e-300), self.expected_price_abroad
        )
        self.expected_price_abroad = market.smooth(
            self.expected_price_abroad, observed, cfg.expectation_smoothing
        )
        memory = min(
            1.0, 1.0 / (self.config.investment.price_memory_years * self.config.ticks_per_year)
        )
        self.long_run_price = market.smooth(self.long_run_price, self.expected_market_price, memory)
        self.long_run_price_abroad = market.smooth(
            self.long_run_price_abroad, self.expected_price_abroad, memory
        )
        self._update_netback()

    def _update_netback(self) -> None:
        """Concentrate price per US$ of contained oxide value, from this tick's trades."""
        w, e, s = self.world, self.world.edges, self.world.stocks
        n_e = len(w.layout.elements)
        m = self._markets[0]
        sl = m.edges
        flow = e.flow_t[sl]
        if flow.sum() <= 0:
            return
        ores = s.attrs[m.seller_rows, w.layout.composition]  # per local seller × element
        basket = (ores @ self.expected_market_price[1 : 1 + n_e])[m.seller_local]  # per edge
        ratio = (flow * self.edge_ask[sl]).sum() / max((flow * basket).sum(), 1e-300)
        self.concentrate_price_per_basket_value = float(
            market.smooth(
                np.array(self.concentrate_price_per_basket_value),
                np.array(ratio),
                self.config.market.expectation_smoothing,
            )
        )

    def _cost_floor(self, rows: np.ndarray) -> np.ndarray:
        """Per output row: the seller's unit cost of the product, before loss tolerance.

        Mines: cash cost. Separation: processing plus expected concentrate cost per kg input,
        allocated to each oxide by its share of expected output value. Magnets: processing
        plus the recipe's expected oxide cost.
        """
        w, s, p = self.world, self.world.stocks, self.world.producers
        n_e = len(w.layout.elements)
        producer = s.owner_kind[rows] != RESERVE
        owner = np.where(producer, s.owner[rows], 0)
        stage = np.where(producer, p.stage[owner], -1)
        product = s.product[rows]
        floor = np.where(producer, p.unit_cost_usd_per_kg[owner], 0.0)
        sep = stage == 1
        if sep.any():
            plant = owner[sep]
            comp = self.typical_ore_composition
            yields = comp * p.recovery[plant]  # per row × element
            oxide_price = s.expected_price_usd_per_kg[
                np.maximum(p.output_rows[plant, 1 : 1 + n_e], 0)
            ]
            value = yields * oxide_price
            share = value / np.maximum(value.sum(axis=1, keepdims=True), 1e-300)
            element = product[sep] - 1
            idx = np.arange(len(plant))
            input_cost = s.expected_price_usd_per_kg[p.input_rows[plant, 0]]
            total = p.unit_cost_usd_per_kg[plant] + input_cost
            floor[sep] = total * share[idx, element] / np.maximum(yields[idx, element], 1e-12)
        mag = stage == 2
        if mag.any():
            plant = owner[mag]
            in_rows = p.input_rows[plant, 1 : 1 + n_e]
            oxide_cost = np.where(
                in_rows >= 0, s.expected_price_usd_per_kg[np.maximum(in_rows, 0)], 0.0
            )
            floor[mag] = p.unit_cost_usd_per_kg[plant] + oxide_cost @ w.magnet_recipe
        return floor

    def _settle(self) -> None:
        """Post the tick's payments and costs to producers', buyers' and the world's accounts."""
        Producer.pay_fixed_costs(self)
        p, b = self.world.producers, self.world.buyers
        n_p, n_b = len(p.names), len(b.names)
        self.tick_profit = self.tick_in[:n_p] - self.tick_out[:n_p] - self.tick_opex
        p.cash_usd_million += self.tick_profit
        self.tick_buyer_spend = self.tick_out[n_p : n_p + n_b]
        b.cash_usd_million -= self.tick_buyer_spend
        self.reserve.cash_usd_million += self.tick_in[-1] - self.tick_out[-1]
        share = metrics.china_share(self, 1)
        if np.isfinite(share):
            self.last_cn_separation_share = share
        for bloc, code in zip(BLOCS, range(len(BLOCS)), strict=True):
            short = metrics.shortage(self, code)
            self.last_shortage[bloc] = short if np.isfinite(short) else 0.0
        if self.reserve.rows is not None and self.config.policies.reserve is not None:
            owner = BLOCS.index(self.bloc_of_party(self.config.policies.reserve.owner))
            product = int(self.world.stocks.product[self.reserve.rows[0]])
            short = metrics.shortage(self, owner, product)
            self.last_reserve_shortage = short if np.isfinite(short) else 0.0
        for name, amount in self.tick_fiscal.items():
            self.accounts[name] += amount
        cap = np.maximum(self.effective_capacity, 1e-300)
        busy = np.where(self.effective_capacity > 0, p.output_t / cap, 0.0)
        w = self.config.market.expectation_smoothing
        operating = p.status == OPERATING
        p.utilisation_history = np.where(
            operating, (1 - w) * p.utilisation_history + w * busy, p.utilisation_history
        )

    def _investment_tick(self) -> bool:
        inv = self.config.investment
        return (
            inv.enabled
            and not self.warming_up
            and self.tick > 0
            and self.tick % max(round(self.months_to_ticks(inv.interval_months)), 1) == 0
        )

    def _is_last_oxide(self, product: int) -> bool:
        return self.config.magnet is not None and product == len(self.world.products) - 2

    def _warn_of_a_large_edge_log(self) -> None:
        """Warn when a run's edge log could outgrow a share of this machine's memory.

        A tick's record takes at most a float per edge for each value logged and per stock row
        for each row value (see :data:`DENSE_LOG`), and 12 bytes for each edge a policy prices
        apart from its seller's ask or levies (not counted here: scenarios that have many are
        small); a firm-level world, where nearly every edge moves, takes about that.
        """
        if self.config.flow_log != "edges":
            return
        w, ticks = self.world, self.config.ticks
        floats = len(metrics.VALUES_LOGGED) * len(w.edges.seller) + len(
            metrics.ROW_VALUES_LOGGED
        ) * len(w.stocks.qty_t)
        need, have = ticks * floats * np.dtype(float).itemsize, physical_memory_bytes()
        if have and need > LOG_MEMORY_SHARE * have:
            warnings.warn(
                f"flow_log: edges keeps up to {need / 2**30:.1f} GiB over {ticks} ticks of "
                f"{len(w.edges.seller):,} edges, more than {LOG_MEMORY_SHARE:.0%} of this "
                f"machine's {have / 2**30:.0f} GiB; flow_log: countries keeps flows per country "
                "pair",
                stacklevel=3,
            )

    def _log_flows(self) -> None:
        """Keep this tick's flows at the resolution of ``config.flow_log``, and consumption."""
        self.consumption_log.append(metrics.consumption_record(self))
        if self.config.flow_log != "edges":
            if self.config.flow_log == "countries":
                self.flow_log.append(metrics.country_flows(self))
            return
        e, keep = self.world.edges, self._flow_arena

        def kept(
            values: np.ndarray, at: np.ndarray | None = None, dtype: type | None = None
        ) -> np.ndarray:
            if at is None:  # a copy (as ``dtype``), written straight into the arena
                out = keep.take(len(values), dtype or values.dtype)
                out[...] = values
                return out
            # np.take writes straight into the arena; "clip" (the indices are in range)
            # because "raise" goes through a temporary copy of the output
            return np.take(values, at, out=keep.take(len(at), values.dtype), mode="clip")

        # Prices are kept where they are set, not per edge: the seller's quoted ask per stock
        # row, with the edges a policy priced apart from it, and the levies; the frame works
        # out each edge's ask and landed cost from them and the tick's edge terms, which are
        # kept by reference (the policy state replaces them, never edits them in place).
        # The touched-by-China share is the seller's, kept per stock row too.
        touched = self.world.stocks.attrs[:, self.world.layout.touched_cn]
        per_row = (touched, self.row_quoted_ask)
        entry = {
            name: kept(values)
            for name, values in zip(metrics.ROW_VALUES_LOGGED, per_row, strict=True)
        }
        entry.update(tick=self.tick, terms=(e.duty, e.tariff, e.transport_usd_per_kg))
        if self._asks_changed:
            changed, asks = (
                np.concatenate(parts) for parts in zip(*self._asks_changed, strict=True)
            )
            entry["ask_edge"], entry["ask_value"] = kept(changed, dtype=np.int32), kept(asks)
        levied = np.flatnonzero(e.levy_usd_per_kg)
        if len(levied):
            entry["levy_edge"] = kept(levied, dtype=np.int32)
            entry["levy_value"] = kept(e.levy_usd_per_kg, levied)
        moving = e.flow_t > 0
        n = int(np.count_nonzero(moving))
        at = None  # most edges moved: every edge is kept, with no index (see DENSE_LOG)
        if n < DENSE_LOG * len(moving):
            at = np.flatnonzero(moving)
            entry["edge"] = kept(at, dtype=np.int32)  # a log that grows every tick: lean
        for name in metrics.VALUES_LOGGED:  # per edge
            entry[name] = kept(getattr(e, name), at)
        self.flow_log.append(entry)

    # ------------------------------------------------------------------ balances

    def reo_in_system_t(self) -> float:
        """Tonnes of REO held in every stock and in transit."""
        w = self.world
        content = w.reo_content[w.stocks.product]  # per row
        return float((w.stocks.qty_t * content).sum() + (w.transit_t * content).sum())

    def mass_balance_error_t(self) -> float:
        """Mined − (stock change + in transit + consumed + recovery losses), t REO."""
        held = self.reo_in_system_t() - self.initial_reo_t
        out = self.consumed_reo_t_total + self.separation_losses_t_total
        return self.mined_t_total - held - out

    def money_balance_error_usd_million(self) -> float:
        """Sum of every account in the closed money system (zero when money is conserved)."""
        p, b = self.world.producers, self.world.buyers
        received = sum(self.accounts[k] for k in RECEIVED)
        paid = sum(self.accounts[k] for k in PAID)
        cash = p.cash_usd_million.sum() + b.cash_usd_million.sum() + self.reserve.cash_usd_million
        return float(cash + received - paid)

    def flows_frame(self):
        """Edge flows of every collected tick as a DataFrame (see ``abm.metrics``)."""
        return metrics.flows_frame(self)
