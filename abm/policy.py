"""Alliance and China policy (MODEL.md §8): edge terms, export controls, floors, pricing, events.

Policy acts first in a tick (§6, steps 1–2): dated events apply or expire, then the rules of
``scenario.policies`` are turned into per-edge terms — tariff, duty, transport, allowed flag and
export-control group — by a handful of vectorised passes, one per rule, redone only when the
rules, blocs, events in force or built producers changed. During clearing the policy supplies
the terms that depend on prices (border levies, China's strategic export asks) and rations
exports under quotas; after clearing it pays floor subsidies and takes upside.

Parties in rules are a country code, a bloc (``alliance``, ``china``, ``other``) or ``any``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from abm.scenario import Event, Scenario, _set_path, build_scenario
from abm.world import BLOCS, MINE, PLANNED, PROCESSOR, RESERVE, month_index

if TYPE_CHECKING:
    from abm.model import RareEarthModel

KG_PER_T = 1000.0


def party_mask(party: str, country: np.ndarray, model: RareEarthModel) -> np.ndarray:
    """Per item: whether its country matches a party (country code, bloc or 'any')."""
    w = model.world
    if party == "any":
        return np.ones(len(country), dtype=bool)
    if party in BLOCS:
        return w.country_bloc[country] == BLOCS.index(party)
    return country == w.layout.countries.index(party)


def product_mask(product: str, products: np.ndarray, model: RareEarthModel) -> np.ndarray:
    """Per item: whether its product matches a product name or 'any'."""
    if product == "any":
        return np.ones(len(products), dtype=bool)
    return products == model.world.products.index(product)


def event_tick(event: Event, scenario: Scenario) -> int:
    """The tick an event applies at (an int is a tick; a date is converted)."""
    if isinstance(event.at, int):
        return event.at
    months = month_index(event.at) - month_index(scenario.start)
    return round(months * scenario.ticks_per_year / 12)


@dataclass
class _Effect:
    """An event in force: what to undo and when."""

    until: int | None
    event: Event
    undo: dict[str, Any]


@dataclass
class _RuleTerms:
    """Edge terms of the rules in force, and copies of what they were computed from."""

    policies: Any  # a deep copy of ``scenario.policies``
    country_bloc: np.ndarray  # per country
    events: list[Event]  # deep copies of the events in force, in order
    tariff: np.ndarray  # per edge
    duty: np.ndarray  # per edge
    transport_usd_per_kg: np.ndarray  # per edge
    rule_allowed: np.ndarray  # per edge: the rules allow trade (whether or not the seller is built)
    export_group: np.ndarray  # per edge: control × product group, -1 if uncontrolled
    quota_covered: np.ndarray  # control × product: 1 where the control covers the product


class PolicyState:
    """Policy in force in a model: events, shocks, quotas left, budgets spent."""

    def __init__(self, model: RareEarthModel) -> None:
        self.model = model
        self.effects: list[_Effect] = []
        self.applied: set[int] = set()  # indices of events already applied
        n_p = len(model.world.producers.names)
        n_b = len(model.world.buyers.names)
        self.capacity_factor = np.ones(n_p)  # per producer: 0 during an outage
        self.demand_factor = np.ones(n_b)  # per buyer: demand shocks
        self.export_group = np.full(len(model.world.edges.seller), -1)  # per edge
        self.quota_left_t = np.zeros(0)  # per (control, product): tonnes left this tick
        self.quota_share = np.zeros((0, 0))  # control × product: share of each quota
        self.export_orders_t = np.zeros(0)  # per (control, product): export orders this tick
        self.export_demand_t = np.zeros(0)  # per (control, product): smoothed export orders
        self.strategic_spent_usd_million = 0.0
        self.strategic_active = False
        s = model.world.stocks
        self._producer_rows = np.flatnonzero(np.isin(s.owner_kind, (MINE, PROCESSOR)))
        self._rule_terms: _RuleTerms | None = None  # kept until an input changes (refresh)
        self._built: np.ndarray | None = None  # per producer: past planning, at last refresh
        self._allowed = np.zeros(0, dtype=bool)  # per edge: the rule terms' allowed, if built

    # ------------------------------------------------------------------ events

    def apply_events(self) -> None:
        """Expire effects whose span has ended, then apply the events dated this tick."""
        model = self.model
        for effect in [e for e in self.effects if e.until == model.tick]:
            self._undo(effect)
            self.effects.remove(effect)
        for i, event in enumerate(model.config.events):
            if i not in self.applied and event_tick(event, model.config) <= model.tick:
                self.applied.add(i)  # an event dated at or before the start applies in tick 1
                self._apply(event)

    def _apply(self, event: Event) -> None:
        model = self.model
        undo: dict[str, Any] = {}
        if event.set:
            data = model.config.model_dump(mode="python", by_alias=True)
            for path, value in event.set.items():
                undo[path] = _get_path(data, path)
                _set_path(data, path, value)
            model.config = _revalidate(data, model.config.events, event)
        months = event.duration_months
        until = (
            None
            if months is None
            else model.tick + round(months * model.config.ticks_per_year / 12)
        )
        self.effects.append(_Effect(until, event, undo))

    def _undo(self, effect: _Effect) -> None:
        model = self.model
        if effect.undo:
            data = model.config.model_dump(mode="python", by_alias=True)
            for path, value in effect.undo.items():
                _set_path(data, path, value)
            model.config = _revalidate(data, model.config.events, effect.event)

    def _shocks(self) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
        """Capacity and demand factors, and transport cuts, of the effects in force."""
        w = self.model.world
        capacity = np.ones(len(w.producers.names))
        demand = np.ones(len(w.buyers.names))
        cuts = []
        names = {name: i for i, name in enumerate(w.producers.names)}
        for effect in self.effects:
            e = effect.event
            for name in e.outage:
                capacity[names[name]] = 0.0
            if e.demand_shock is not None:
                d = e.demand_shock
                b = w.buyers
                match = party_mask(d.where, b.country, self.model) & product_mask(
                    d.product, b.product, self.model
                )
                if d.sector != "any":
                    match &= np.array([s == d.sector for s in b.sectors])
                demand = np.where(match, demand * d.multiplier, demand)
            if e.transport_cut is not None:
                cuts.append((e.transport_cut.between, e.transport_cut.and_))
        return capacity, demand, cuts

    # ------------------------------------------------------------------ edge terms

    def refresh(self) -> None:
        """Set blocs, edge terms and this tick's quotas from the policies and shocks in force.

        The edge terms take several passes over every edge, so they are recomputed only when
        what they are computed from changed since the last refresh: the scenario's policies,
        the blocs and the events in force, compared by value (a scenario edited in place
        counts), and which producers are built. Quotas and licence terms are set every tick.
        The kept arrays are handed out again each tick: replace them, never edit them in place
        (the edge flow log keeps the tick's duties, tariffs and transport costs by reference).
        """
        model = self.model
        w, cfg = model.world, model.config
        w.country_bloc = np.array([BLOCS.index(cfg.bloc_of(c)) for c in w.layout.countries])
        events = [effect.event for effect in self.effects]
        terms = self._rule_terms
        if (
            terms is None
            or cfg.policies != terms.policies
            or not np.array_equal(w.country_bloc, terms.country_bloc)
            or events != terms.events
        ):
            self.capacity_factor, self.demand_factor, cuts = self._shocks()
            terms = self._rule_terms = self._compute_rule_terms(cuts, events)
            self._built = None  # combine the new rule terms with the built producers below
        s, e = w.stocks, w.edges
        built = w.producers.status != PLANNED  # per producer
        if self._built is None or not np.array_equal(built, self._built):
            row_built = np.ones(len(s.owner), dtype=bool)  # per stock row; the reserve's: built
            row_built[self._producer_rows] = built[s.owner[self._producer_rows]]
            self._built, self._allowed = built, row_built[e.seller] & terms.rule_allowed
        e.tariff, e.duty, e.allowed = terms.tariff, terms.duty, self._allowed
        e.transport_usd_per_kg = terms.transport_usd_per_kg
        self.export_group = terms.export_group
        pol, tpy = cfg.policies, cfg.ticks_per_year
        self._set_quotas(pol, terms.quota_covered, tpy)
        self.licence_delay_ticks = np.array(
            [round(rule.delay_months * tpy / 12) for rule in pol.export_controls], dtype=np.int64
        )
        self.approval = np.array([rule.approval_probability for rule in pol.export_controls])

    def _compute_rule_terms(self, cuts: list[tuple[str, str]], events: list[Event]) -> _RuleTerms:
        """The edge terms of the rules and ``events`` in force and transport ``cuts``, afresh."""
        model = self.model
        w, cfg = model.world, model.config
        s, e = w.stocks, w.edges
        pol = cfg.policies
        seller_c, buyer_c = e.seller_country, e.buyer_country  # per edge
        cross = seller_c != buyer_c  # per edge
        alliance = BLOCS.index("alliance")
        both_alliance = (w.country_bloc[seller_c] == alliance) & (
            w.country_bloc[buyer_c] == alliance
        )
        tariff = np.zeros(len(e.seller))
        for rule in pol.tariffs:
            match = (
                cross
                & party_mask(rule.origin, seller_c, model)
                & party_mask(rule.destination, buyer_c, model)
                & product_mask(rule.product, e.product, model)
            )
            tariff = np.where(match, np.maximum(tariff, rule.rate), tariff)
        if pol.preference.zero_internal_tariffs:
            tariff[both_alliance] = 0.0
        exports = (seller_c == w.china) & (buyer_c != w.china)  # per edge
        duty = np.zeros(len(e.seller))
        for rule in pol.export_duties:
            match = exports & product_mask(rule.product, e.product, model)
            duty = np.where(match, np.maximum(duty, rule.rate), duty)
        discount = np.where(both_alliance & cross, pol.preference.transport_discount_share, 0.0)
        allowed = np.ones(len(e.seller), dtype=bool)
        if w.reserve_rows is not None and pol.reserve is not None:
            # the reserve releases to its owner's buyers only
            from_reserve = e.seller == w.reserve_rows[1]
            allowed &= ~(from_reserve & ~party_mask(pol.reserve.owner, buyer_c, model))
        if pol.compliance.ban_allied_mines_to_china:
            allied_mine = (s.owner_kind[e.seller] == MINE) & (w.country_bloc[seller_c] == alliance)
            allowed &= ~(allied_mine & (buyer_c == w.china))
        for a, b in cuts:
            ab = party_mask(a, seller_c, model) & party_mask(b, buyer_c, model)
            ba = party_mask(b, seller_c, model) & party_mask(a, buyer_c, model)
            allowed &= ~(ab | ba)
        n_prod = len(w.products)
        control = np.full(len(e.seller), -1)  # per edge: the export control that applies
        for g, rule in enumerate(pol.export_controls):
            match = (
                exports
                & (control < 0)
                & product_mask(rule.product, e.product, model)
                & party_mask(rule.destination, buyer_c, model)
            )
            control[match] = g
            if rule.quota_t_per_yr == 0:
                allowed &= ~match
        # a quota is shared by the products it covers pro rata to smoothed export orders,
        # so no product's market takes it all just by clearing first
        export_group = np.where(control >= 0, control * n_prod + e.product, -1)
        covered = np.zeros(len(pol.export_controls) * n_prod)
        covered[np.unique(export_group[control >= 0])] = 1.0
        return _RuleTerms(
            policies=copy.deepcopy(pol),
            country_bloc=w.country_bloc.copy(),
            events=copy.deepcopy(events),
            tariff=tariff,
            duty=duty,
            transport_usd_per_kg=e.base_transport_usd_per_kg * (1.0 - discount),
            rule_allowed=allowed,
            export_group=export_group,
            quota_covered=covered.reshape(-1, n_prod),
        )

    def _set_quotas(self, pol: Any, covered: np.ndarray, tpy: int) -> None:
        """This tick's quota per (control, product), shared by smoothed export orders."""
        n_groups, n_prod = covered.size, covered.shape[1]
        if len(self.export_orders_t) == n_groups == len(self.export_demand_t):
            weight = self.model.config.market.expectation_smoothing
            self.export_demand_t = (
                1 - weight
            ) * self.export_demand_t + weight * self.export_orders_t
        elif len(self.export_orders_t) == n_groups:
            self.export_demand_t = self.export_orders_t.copy()
        else:
            self.export_demand_t = np.zeros(n_groups)
        demand = self.export_demand_t.reshape(-1, n_prod)
        basis = np.where(demand.sum(axis=1, keepdims=True) > 0, demand * covered, covered)
        share = basis / np.maximum(basis.sum(axis=1, keepdims=True), 1e-300)
        cap = np.array(
            [
                np.inf if rule.quota_t_per_yr is None else rule.quota_t_per_yr / tpy
                for rule in pol.export_controls
            ]
        ).reshape(-1, 1)
        finite = np.where(np.isinf(cap), 0.0, cap)
        self.quota_left_t = np.where(np.isinf(cap), np.inf, finite * share).ravel()
        self.quota_share = share  # control × product
        self.export_orders_t = np.zeros(n_groups)

    def pass_on_unused_quota(self, product: int) -> None:
        """After a market clears, its unused quota goes to the products that clear later.

        Shared pro rata to their quota shares, so a quota is never wasted on a product whose
        exporters had nothing to sell while another product's exports are rationed.
        """
        n_prod = len(self.model.world.products)
        if len(self.quota_left_t) == 0 or product + 1 >= n_prod:
            return
        left = self.quota_left_t.reshape(-1, n_prod)  # control × product (a view)
        unused = np.where(np.isfinite(left[:, product]), left[:, product], 0.0)  # per control
        later = self.quota_share[:, product + 1 :]  # control × later product
        total = later.sum(axis=1)
        passes = (unused > 0) & (total > 0)
        if not passes.any():
            return
        weight = later[passes] / total[passes, None]
        left[passes, product + 1 :] += unused[passes, None] * weight
        left[passes, product] = 0.0

    def record_export_orders(self, sl: slice, edge_orders: np.ndarray) -> None:
        """Accumulate this tick's controlled export orders per (control, product).

        ``edge_orders`` count each tonne asked for once (flows plus orders left unfilled), so
        orders re-sent after rationing are not counted twice.
        """
        group = self.export_group[sl]
        controlled = group >= 0
        if controlled.any():
            self.export_orders_t += np.bincount(
                group[controlled], edge_orders[controlled], minlength=len(self.export_orders_t)
            )

    # ------------------------------------------------------------------ during clearing

    def licensed(self, sl: slice) -> np.ndarray:
        """Per edge of a market: licence granted this tick (a draw per controlled edge)."""
        group = self.export_group[sl]
        controlled = group >= 0
        granted = np.ones(len(group), dtype=bool)
        if controlled.any():
            p = self.approval[group[controlled] // len(self.model.world.products)]
            draws = self.model.licence_rng.random(int(controlled.sum()))
            granted[controlled] = draws < p
        return granted

    def extra_lead(self, sl: slice) -> np.ndarray:
        """Per edge of a market: licensing delay in ticks."""
        group = self.export_group[sl]
        out = np.zeros(len(group), dtype=np.int64)
        controlled = group >= 0
        out[controlled] = self.licence_delay_ticks[
            group[controlled] // len(self.model.world.products)
        ]
        return out

    def export_asks(self, sl: slice, ask: np.ndarray, cost_floor: np.ndarray) -> np.ndarray:
        """Per edge: the ask China's sellers charge abroad (strategic mode: below cost)."""
        cfg = self.model.config.policies.china_pricing
        if not self.strategic_active:
            return ask
        e, china = self.model.world.edges, self.model.world.china
        exports = (e.seller_country[sl] == china) & (e.buyer_country[sl] != china)
        covered = np.zeros(len(ask), dtype=bool)
        for product in cfg.products:
            covered |= product_mask(product, e.product[sl], self.model)
        cut = np.minimum(ask, cfg.export_price_fraction * cost_floor)
        return np.where(exports & covered, cut, ask)

    def floor_levels(self, *mechanisms: str) -> np.ndarray:
        """Per product: the highest floor level of the given mechanisms in force (0: none)."""
        w = self.model.world
        levels = np.zeros(len(w.products))
        for floor in self.model.config.policies.price_floors:
            if floor.mechanism in mechanisms:
                p = w.products.index(floor.product)
                levels[p] = max(levels[p], floor.level_usd_per_kg)
        return levels

    def _to_alliance(self, sl: slice) -> np.ndarray:
        """Per edge of a market: the buyer is in the alliance."""
        w = self.model.world
        return w.country_bloc[w.edges.buyer_country[sl]] == BLOCS.index("alliance")

    def minimum_asks(
        self, sl: slice, product: int, ask: np.ndarray, compliant: np.ndarray
    ) -> np.ndarray:
        """Per edge: compliant sales into the alliance settle at no less than a border floor F.

        A border-adjusted floor is a minimum price in the alliance market: compliant sellers
        sell to alliance buyers at max(ask, F), and non-compliant imports pay the levy of
        :meth:`border_levy`, so no covered material lands in the alliance below F. Buyers, not
        taxpayers, pay for it (the contrast with a price-gap subsidy).
        """
        level = self.floor_levels("border_adjusted")[product]
        if level <= 0:
            return ask
        return np.where(compliant & self._to_alliance(sl), np.maximum(ask, level), ask)

    def border_levy(
        self, sl: slice, product: int, ask: np.ndarray, compliant: np.ndarray
    ) -> np.ndarray:
        """Per edge: variable levy max(0, F − ask) on non-compliant imports into the alliance."""
        e = self.model.world.edges
        level = self.floor_levels("border_adjusted")[product]
        if level <= 0:
            return np.zeros(len(ask))
        imported = e.seller_country[sl] != e.buyer_country[sl]
        levy = np.where(self._to_alliance(sl) & imported & ~compliant, level - ask, 0.0)
        return np.maximum(levy, 0.0)

    def floor_payments(
        self, product: int, flow: np.ndarray, ask: np.ndarray, compliant: np.ndarray
    ) -> tuple[np.ndarray, float, float] | None:
        """Price-gap subsidy and upside take on compliant sales of a product.

        Returns per edge the net transfer to the seller (US$ M; positive: subsidy), the total
        subsidy paid and the total upside taken by the alliance; None if no price-gap floor
        covers the product (nothing to pay, nothing computed).
        """
        name = self.model.world.products[product]
        floors = [
            floor
            for floor in self.model.config.policies.price_floors
            if floor.mechanism == "price_gap_subsidy" and floor.product == name
        ]
        if not floors:
            return None
        net = np.zeros(len(flow))
        for floor in floors:
            covered = compliant & (flow > 0)
            gap = np.where(covered, np.maximum(floor.level_usd_per_kg - ask, 0.0), 0.0)
            upside = np.where(
                covered, floor.upside_share * np.maximum(ask - floor.level_usd_per_kg, 0.0), 0.0
            )
            net += flow / KG_PER_T * (gap - upside)
        subsidy = float(np.clip(net, 0, None).sum())
        return net, subsidy, float(np.clip(-net, 0, None).sum())

    def subsidised_ask_floor(self, rows: np.ndarray, floor: np.ndarray) -> np.ndarray:
        """Per output row: the lowest ask worth taking, given price-gap floors (§7.2, §8).

        A compliant producer covered by a price-gap subsidy at F receives max(ask, F) per kg, so
        where F covers its unit cost any ask is worth taking: its floor drops to zero and it
        can undercut to sell its output (the subsidy pays the gap).
        """
        model, s = self.model, self.model.world.stocks
        levels = self.floor_levels("price_gap_subsidy")
        if not levels.any():
            return floor
        level = levels[s.product[rows]]  # per row
        covered = (level > 0) & (s.owner_kind[rows] != RESERVE) & model.compliant_rows(rows)
        return np.where(covered & (level >= floor), 0.0, floor)

    def guaranteed_prices(self) -> np.ndarray:
        """Per product: the floor a compliant producer can count on when investing (0: none).

        Subsidy and offtake floors guarantee F to the producer; a border-adjusted floor only
        protects the alliance market, so it does not count here.
        """
        return self.floor_levels("price_gap_subsidy", "offtake")

    # ------------------------------------------------------------------ China's pricing mode

    def update_strategic_pricing(self, non_cn_separation_share: float) -> None:
        """Strategic mode is on while non-CN separation exceeds the trigger and budget lasts."""
        cfg = self.model.config.policies.china_pricing
        self.strategic_active = (
            cfg.mode == "strategic"
            and non_cn_separation_share > cfg.trigger_non_cn_share
            and self.strategic_spent_usd_million < cfg.budget_usd_million
        )


def _get_path(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        if isinstance(node, list):
            node = (
                node[int(part)]
                if part.lstrip("-").isdigit()
                else next(
                    item for item in node if isinstance(item, dict) and item.get("name") == part
                )
            )
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return copy.deepcopy(node)


def _revalidate(data: dict[str, Any], events: list[Event], event: Event) -> Scenario:
    """The scenario after an event's changes; the event list itself is kept as loaded.

    Each event was validated at load against the initial scenario; other events are not
    re-checked against the changed one, so an event may build on what an earlier one set.
    """
    data = {key: value for key, value in data.items() if key != "events"}
    scenario = build_scenario(data, f"event '{event.name or event.at}'", standing=False)
    return scenario.model_copy(update={"events": events})
