"""Mines, processors and buyers: Mesa agents and their behaviour rules (MODEL.md §4, §7.3–§7.4).

Each agent is a Mesa ``Agent`` whose state lives in the model's arrays (``model.world``); the
properties below read it, so ``mine.capacity_t_per_yr`` or ``buyer.inventory_t`` work as a
researcher expects. Behaviour is written once per agent type as a class-level rule over all
agents of that type at once (staged activation by type, vectorised; §14):

- :class:`Mine` — ``produce``.
- :class:`Processor` — ``plan_inputs``, ``separate``, ``make_magnets``.
- :class:`Producer` (both) — ``review_operations`` (idle, restart, close) and ``invest``
  (expansion, pipeline projects by NPV).
- :class:`Buyer` — ``plan_orders``, ``consume``, ``adapt_demand`` (growth, elasticity,
  substitution).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import mesa
import numpy as np

from abm import provenance
from abm.policy import party_mask
from abm.world import (
    BLOCS,
    CLOSED,
    CONSTRUCTION,
    IDLE,
    NEVER,
    OPERATING,
    OUTPUT,
    PLANNED,
    RESERVE,
    STATUS,
)

if TYPE_CHECKING:
    from abm.model import RareEarthModel
    from abm.world import Producers

KG_PER_T = 1000.0
USD_MILLION = 1e6
STAGE_NAMES = ("mine", "separation", "magnet")


class Producer(mesa.Agent):
    """A mine or processing plant; its state is row ``index`` of ``model.world.producers``."""

    model: RareEarthModel

    def __init__(self, model: RareEarthModel, index: int) -> None:
        super().__init__(model)
        self.index = index
        self.name: str = model.world.producers.names[index]

    @property
    def _p(self) -> Producers:
        return self.model.world.producers

    @property
    def country(self) -> str:
        """Country code."""
        return self.model.world.layout.countries[self._p.country[self.index]]

    @property
    def bloc(self) -> str:
        """'alliance', 'china' or 'other' (follows alliance membership)."""
        return BLOCS[self.model.world.country_bloc[self._p.country[self.index]]]

    @property
    def stage(self) -> str:
        """'mine', 'separation' or 'magnet'."""
        return STAGE_NAMES[self._p.stage[self.index]]

    @property
    def status(self) -> str:
        """'planned', 'construction', 'operating', 'idle' or 'closed'."""
        return STATUS[self._p.status[self.index]]

    @property
    def capacity_t_per_yr(self) -> float:
        """Built capacity (t REO/yr for mines and separation input, t magnet/yr for magnets)."""
        return float(self._p.capacity_t_per_yr[self.index])

    @property
    def unit_cost_usd_per_kg(self) -> float:
        """Cash cost (mines) or processing cost (plants) per kg."""
        return float(self._p.unit_cost_usd_per_kg[self.index])

    @property
    def cash_usd_million(self) -> float:
        """Cumulative cash position."""
        return float(self._p.cash_usd_million[self.index])

    @property
    def asks_usd_per_kg(self) -> dict[str, float]:
        """Current ask per product sold."""
        rows = self._p.output_rows[self.index]
        w = self.model.world
        return {
            w.products[p]: float(w.stocks.ask_usd_per_kg[r]) for p, r in enumerate(rows) if r >= 0
        }

    @property
    def stocks_t(self) -> dict[str, float]:
        """Output stock per product sold (t)."""
        rows = self._p.output_rows[self.index]
        w = self.model.world
        return {w.products[p]: float(w.stocks.qty_t[r]) for p, r in enumerate(rows) if r >= 0}

    # ------------------------------------------------------------ rules over all producers

    @staticmethod
    def effective_capacity_t(model: RareEarthModel) -> np.ndarray:
        """Per producer: output possible this tick (capacity, ramp-up, status, national quota)."""
        w, p = model.world, model.world.producers
        per_tick = p.capacity_t_per_yr / model.config.ticks_per_year
        since = model.tick - p.ramp_start_tick
        ramp = np.where(
            (p.ramp_ticks > 0) & (since < p.ramp_ticks),
            (since + 1) / np.maximum(p.ramp_ticks, 1),
            1.0,
        )
        cap = per_tick * np.clip(ramp, 0.0, 1.0) * (p.status == OPERATING)
        cap = cap * model.policy.capacity_factor  # outages
        quotas = {0: model.config.mining_quota_t_per_yr, 1: model.config.separation_quota_t_per_yr}
        for stage, by_country in quotas.items():
            for country, quota in by_country.items():
                c = w.layout.countries.index(country)
                mask = (p.stage == stage) & (p.country == c)
                total = cap[mask].sum()
                growth = model.config.quota_growth_per_yr.get(country, 0.0)
                years = max(model.tick, 0) / model.config.ticks_per_year
                allowed = quota * (1 + growth) ** years / model.config.ticks_per_year
                if total > allowed:
                    cap[mask] *= allowed / total
        return cap

    @staticmethod
    def unit_margin(
        model: RareEarthModel,
        market_view: bool,
        guaranteed: np.ndarray | None = None,
        prices: np.ndarray | None = None,
        producers: np.ndarray | None = None,
    ) -> np.ndarray:
        """Per producer: expected margin per kg of output capacity unit (US$/kg).

        With ``market_view`` the margin uses market-wide expected prices (for idle producers
        and projects, which sell nothing); otherwise each producer's own expected prices.
        ``guaranteed`` (per product) raises the market-view sale prices to a price floor;
        ``prices`` (per product) replaces the market-wide expected prices. ``producers`` (an
        index array) limits the result to those producers, in that order (default: all).
        """
        w, p, s = model.world, model.world.producers, model.world.stocks
        n_e = len(w.layout.elements)
        market = model.expected_market_price if prices is None else prices
        oxide_price = market[1 : 1 + n_e]  # per element, as a cost
        sale_price = market  # per product, as revenue
        if guaranteed is not None:
            sale_price = np.maximum(sale_price, guaranteed)
        ids = np.arange(len(p.names)) if producers is None else producers
        stage = p.stage[ids]
        margin = np.zeros(len(ids))
        mine, sep, mag = ((stage == k).nonzero()[0] for k in range(3))  # positions in ids
        if len(mine):
            miners = ids[mine]
            if market_view:
                # oxide value of the ore, US$/kg (one product over all producers: the same
                # rounding whichever producers are asked for)
                basket = (p.composition @ oxide_price)[miners]
                conc = model.concentrate_price_per_basket_value * basket
            else:
                conc = s.expected_price_usd_per_kg[np.maximum(p.output_rows[miners, 0], 0)]
            margin[mine] = conc - p.unit_cost_usd_per_kg[miners]
        if len(sep):
            plants = ids[sep]
            typical_ore = model.typical_ore_composition  # per element
            recovery = p.recovery[plants]  # per plant × element
            input_rows = p.input_rows[plants, 0]
            if market_view:
                value = ((typical_ore * p.recovery) @ sale_price[1 : 1 + n_e])[plants]
                input_cost = model.concentrate_price_per_basket_value * (typical_ore @ oxide_price)
            else:  # a plant's own view: the ore it actually holds and pays for
                held = s.attrs[np.maximum(input_rows, 0), w.layout.composition]
                has_ore = (input_rows >= 0) & (held.sum(axis=1) > 0)
                yields = np.where(has_ore[:, None], held, typical_ore) * recovery
                out = p.output_rows[plants, 1 : 1 + n_e]
                own = np.where(
                    out >= 0, s.expected_price_usd_per_kg[np.maximum(out, 0)], oxide_price[None, :]
                )
                value = (yields * own).sum(axis=1)
                input_cost = s.expected_price_usd_per_kg[np.maximum(input_rows, 0)]
            margin[sep] = value - p.unit_cost_usd_per_kg[plants] - input_cost
        if len(mag):
            plants = ids[mag]
            magnet = w.products.index("magnet")
            recipe_cost = w.magnet_recipe @ oxide_price
            if market_view:
                price = sale_price[magnet]
            else:
                price = s.expected_price_usd_per_kg[np.maximum(p.output_rows[plants, magnet], 0)]
            margin[mag] = price - p.unit_cost_usd_per_kg[plants] - recipe_cost
        return margin

    @staticmethod
    def market_margin(
        model: RareEarthModel, guaranteed: np.ndarray | None = None, long_run: bool = False
    ) -> np.ndarray:
        """Per producer: unit margin at the prices of the market it would sell into.

        Producers in China value output at world-wide expected prices; producers elsewhere at
        the prices paid outside China, which differ when exports are controlled (two tiers).
        With ``long_run`` the prices are investors' long-run view (``price_memory_years``).
        """
        world_price = model.long_run_price if long_run else model.expected_market_price
        abroad = model.long_run_price_abroad if long_run else model.expected_price_abroad
        inside = Producer.unit_margin(model, True, guaranteed, world_price)
        outside = Producer.unit_margin(model, True, guaranteed, abroad)
        return np.where(model.world.producers.country == model.world.china, inside, outside)

    @staticmethod
    def pay_fixed_costs(model: RareEarthModel) -> None:
        """Operating producers pay their fixed costs for the month (see ``fixed_cost_share``)."""
        p = model.world.producers
        share = model.config.investment.fixed_cost_share
        operating = np.flatnonzero(p.status == OPERATING)
        if share <= 0 or len(operating) == 0:
            return
        per_tick = p.capacity_t_per_yr[operating] / model.config.ticks_per_year
        cost = share * p.unit_cost_usd_per_kg[operating] * per_tick / KG_PER_T
        model.charge_opex(operating, cost)

    @staticmethod
    def review_operations(model: RareEarthModel) -> None:
        """Idle after months of losses, restart when the market margin is positive, close."""
        p, inv = model.world.producers, model.config.investment
        own = Producer.unit_margin(model, market_view=False)
        market = Producer.market_margin(model)
        operating = p.status == OPERATING
        price = np.maximum(own + p.unit_cost_usd_per_kg, 1e-9)  # expected unit revenue
        market_price = np.abs(market + p.unit_cost_usd_per_kg)
        fixed = inv.fixed_cost_share * p.unit_cost_usd_per_kg  # per kg of capacity
        # below cost beyond rounding, or selling too little to pay the fixed costs
        idle_capacity_loss = (own + fixed) * p.utilisation_history < fixed - 1e-9 * price
        # ... while the market's prices do not cover its cost either: in a glut every seller's
        # ask sinks to its own floor, and only those the market price leaves short idle (the
        # dearest first), not a whole industry in the same month
        market_short = market < -1e-9 * market_price
        losing = operating & ((own < -1e-9 * price) | idle_capacity_loss) & market_short
        p.loss_months = np.where(losing, p.loss_months + 1, 0)
        # the counters count ticks; the rules are in months
        to_idle = operating & (p.loss_months >= model.months_to_ticks(inv.loss_months_to_idle))
        idle = p.status == IDLE
        restart = idle & (market > 1e-9 * market_price)
        p.idle_months = np.where(idle & ~restart, p.idle_months + 1, 0)
        close = idle & ~restart & (p.idle_months >= model.months_to_ticks(inv.idle_months_to_close))
        p.status = np.where(to_idle, IDLE, p.status)
        p.status = np.where(restart, OPERATING, p.status)
        p.status = np.where(close, CLOSED, p.status)
        p.capacity_t_per_yr = np.where(close, 0.0, p.capacity_t_per_yr)
        p.pending_capacity_t_per_yr = np.where(close, 0.0, p.pending_capacity_t_per_yr)
        model.exits_total += int(close.sum())
        w = model.config.market.expectation_smoothing
        p.margin_history = (1 - w) * p.margin_history + w * own / price

    @staticmethod
    def commission(model: RareEarthModel) -> None:
        """Capacity under construction comes online when its lead time has passed."""
        p = model.world.producers
        due = (p.pending_capacity_t_per_yr > 0) & (p.online_tick == model.tick)
        new = due & (p.status == CONSTRUCTION)
        p.capacity_t_per_yr = p.capacity_t_per_yr + np.where(due, p.pending_capacity_t_per_yr, 0)
        p.pending_capacity_t_per_yr = np.where(due, 0.0, p.pending_capacity_t_per_yr)
        p.online_tick = np.where(due, NEVER, p.online_tick)
        p.ramp_start_tick = np.where(new, model.tick, p.ramp_start_tick)
        p.status = np.where(new, OPERATING, p.status)
        model.entries_total += int(new.sum())

    @staticmethod
    def invest(model: RareEarthModel) -> None:
        """Yearly: expand profitable busy producers; start pipeline projects with NPV > 0."""
        p, inv = model.world.producers, model.config.investment
        tpy = model.config.ticks_per_year
        # expansion of incumbents
        expand = (
            (p.status == OPERATING)
            & (p.pending_capacity_t_per_yr == 0)
            & (p.margin_history >= inv.expansion_hurdle)
            & (p.utilisation_history >= inv.utilisation_to_expand)
        )
        added = np.where(expand, p.capacity_t_per_yr * inv.expansion_share, 0.0)
        capex = added * inv.expansion_capex_usd_per_t_per_yr / USD_MILLION
        p.pending_capacity_t_per_yr = p.pending_capacity_t_per_yr + added
        p.online_tick = np.where(
            expand, model.tick + round(inv.expansion_lead_time_years * tpy), p.online_tick
        )
        # pipeline projects by NPV at market prices
        margin = Producer.market_margin(model, long_run=True)
        floored = Producer.market_margin(model, model.policy.guaranteed_prices(), long_run=True)
        covered = p.country != model.world.china  # compliant producers a floor covers
        margin = np.where(covered, floored, margin)
        npv = project_npv(
            margin,
            p.pending_capacity_t_per_yr,
            p.capex_usd_million,
            p.lead_ticks / tpy,
            p.life_years,
            p.discount_rate,
        )
        start = (p.status == PLANNED) & (model.tick >= p.earliest_tick) & (npv > 0)
        start &= _has_a_plant(model, start)
        p.status = np.where(start, CONSTRUCTION, p.status)
        p.online_tick = np.where(start, model.tick + np.maximum(p.lead_ticks, 1), p.online_tick)
        capex = capex + np.where(start, p.capex_usd_million, 0.0)
        p.cash_usd_million -= capex
        model.accounts["capital_goods"] += capex.sum()
        model.capex_paid_usd_million += capex.sum()


def variable_cost_usd_per_kg(model: RareEarthModel, producers: np.ndarray) -> np.ndarray:
    """Per producer: the part of its unit cost that varies with output (US$/kg).

    The rest, ``fixed_cost_share`` of the unit cost at full capacity, is paid every month a
    producer operates, whatever its output (:meth:`Producer.pay_fixed_costs`), so a plant
    that cannot sell loses money. At full capacity the two add up to the unit cost.
    """
    share = model.config.investment.fixed_cost_share
    return (1.0 - share) * model.world.producers.unit_cost_usd_per_kg[producers]


def _has_a_plant(model: RareEarthModel, starting: np.ndarray) -> np.ndarray:
    """Per producer: a captive mine (``sells_to``) has a plant built, being built or starting.

    An integrated project's mine is not built before its own separation plant is decided.
    """
    p = model.world.producers
    mines, plants = model.world.captive
    ok = np.ones(len(p.names), dtype=bool)
    if len(mines):
        plant_there = (p.status[plants] != PLANNED) & (p.status[plants] != CLOSED) | starting[
            plants
        ]
        ok[mines] = False
        np.logical_or.at(ok, mines, plant_there)
    return ok


def project_npv(
    margin_usd_per_kg: np.ndarray,
    capacity_t_per_yr: np.ndarray,
    capex_usd_million: np.ndarray,
    lead_years: np.ndarray,
    life_years: np.ndarray,
    discount_rate: np.ndarray,
) -> np.ndarray:
    """NPV (US$ M) of building: a level margin on full capacity for ``life`` years after lead."""
    cash_per_yr = margin_usd_per_kg * capacity_t_per_yr * KG_PER_T / USD_MILLION
    r = np.maximum(discount_rate, 1e-9)
    annuity = (1 - (1 + r) ** -life_years) / r
    return cash_per_yr * annuity / (1 + r) ** lead_years - capex_usd_million


def output_target(model: RareEarthModel, rows: np.ndarray, capacity_t: np.ndarray) -> np.ndarray:
    """Per output row: what to make this tick — expected sales plus a share of the stock gap.

    The stock target is half the seller's stock cover at full capacity (``capacity_t`` per
    tick, in the row's product), so a seller that sells nothing still offers some stock.
    """
    s, cfg = model.world.stocks, model.config.market
    target = 0.5 * model.months_to_ticks(cfg.stock_cover_months) * capacity_t
    adjust = model.months_to_ticks(cfg.order_adjust_months)
    return np.maximum(s.expected_sales_t[rows] + (target - s.qty_t[rows]) / adjust, 0.0)


def output_capacity_t(model: RareEarthModel, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per output row: owner's effective capacity and output this tick, in the row's product.

    Effective capacity counts status, ramp-up, quotas and outages; separation plants' oxide
    rows use the typical ore's yields.
    """
    t = _offer_terms(model, rows)
    cap = np.where(t.reserve, 0.0, model.effective_capacity[t.owner])
    return cap * t.yields, model.world.producers.output_t[t.owner] * t.yields


def _makeable_from_inputs_t(model: RareEarthModel, rows: np.ndarray) -> np.ndarray:
    """Per output row: what the owner's inputs still on hand would make (mines: unlimited).

    Separation: remaining concentrate times the typical yield of the row's oxide; magnets: the
    scarcest recipe input over its coefficient.
    """
    t, qty = _offer_terms(model, rows), model.world.stocks.qty_t
    out = np.full(len(rows), np.inf)
    if len(t.sep):
        out[t.sep] = qty[t.sep_input] * t.sep_typical * t.sep_recovery
    if len(t.mag):
        out[t.mag] = (qty[t.mag_inputs] / t.mag_recipe).min(axis=1)
    return out


@dataclass
class _OfferTerms:
    """What the offer of some output rows depends on that never changes (§7.2)."""

    rows: np.ndarray  # the output rows these terms are for
    reserve: np.ndarray  # per row: a reserve's release row
    owner: np.ndarray  # per row: owning producer (0 for a reserve)
    yields: np.ndarray  # per row: output of the row's product per tonne of owner's output
    sep: np.ndarray  # positions of separation plants' rows
    sep_input: np.ndarray  # per such row: the plant's concentrate row
    sep_typical: np.ndarray  # per such row: the typical ore's share of the row's oxide
    sep_recovery: np.ndarray  # per such row: the plant's recovery of it
    mag: np.ndarray  # positions of magnet plants' rows
    mag_inputs: np.ndarray  # per such row × recipe element used: the plant's input row
    mag_recipe: np.ndarray  # per recipe element used: t per t of magnet


def _offer_terms(model: RareEarthModel, rows: np.ndarray) -> _OfferTerms:
    """The static offer terms of ``rows``, built on first use for that array and kept."""
    cache = model.__dict__.setdefault("_offer_terms_cache", {})
    terms = cache.get(id(rows))
    if terms is not None and terms.rows is rows:
        return terms
    w, p, s = model.world, model.world.producers, model.world.stocks
    n_e = len(w.layout.elements)
    reserve = s.owner_kind[rows] == RESERVE
    owner = np.where(reserve, 0, s.owner[rows])
    stage = np.where(reserve, 0, p.stage[owner])
    sep_at, mag_at = np.flatnonzero(stage == 1), np.flatnonzero(stage == 2)
    plant, element = owner[sep_at], s.product[rows[sep_at]] - 1
    typical, recovery = model.typical_ore_composition[element], p.recovery[plant, element]
    yields = np.ones(len(rows))  # a reserve's rows: never used (no capacity, releases all)
    yields[sep_at] = typical * recovery
    used = np.flatnonzero(w.magnet_recipe > 0)
    terms = _OfferTerms(
        rows=rows,
        reserve=reserve,
        owner=owner,
        yields=yields,
        sep=sep_at,
        sep_input=p.input_rows[plant, 0],
        sep_typical=typical,
        sep_recovery=recovery,
        mag=mag_at,
        mag_inputs=p.input_rows[owner[mag_at]][:, 1 : 1 + n_e][:, used],
        mag_recipe=w.magnet_recipe[used],
    )
    cache[id(rows)] = terms  # keeps ``rows`` alive, so its id is not reused
    return terms


def planned_offer_t(model: RareEarthModel, rows: np.ndarray) -> np.ndarray:
    """Per output row: what the seller could sell this tick; its ask is set against it (§7.2).

    Its planned sales — expected sales plus a share of the stock above target, at least a
    tenth of capacity, at most the stock on hand — plus the capacity it left unused this tick
    and could have used with the inputs on hand: a seller with spare capacity meets orders
    below that as excess supply and cuts its ask towards cost, so prices under slack capacity
    settle at the marginal seller's cost (the spatial equilibrium of §11.2) and rise above it
    only where capacity binds. Capacity idle for want of inputs is not on offer.
    """
    s, cfg = model.world.stocks, model.config.market
    capacity, made = output_capacity_t(model, rows)
    target = 0.5 * model.months_to_ticks(cfg.stock_cover_months) * capacity
    adjust = model.months_to_ticks(cfg.order_adjust_months)
    qty = s.qty_t[rows]
    offer = s.expected_sales_t[rows] + (qty - target) / adjust
    offer = np.clip(np.maximum(offer, 0.1 * capacity), 0.0, qty)
    spare = np.minimum(np.maximum(capacity - made, 0.0), _makeable_from_inputs_t(model, rows))
    offer = offer + spare
    return np.where(_offer_terms(model, rows).reserve, qty, offer)  # releases: all of it


class Mine(Producer):
    """A mine: produces concentrate up to capacity and quota, sells it at its ask."""

    @staticmethod
    def produce(model: RareEarthModel) -> None:
        """All mines produce into their concentrate stock, up to room under the stock cap."""
        p, s = model.world.producers, model.world.stocks
        mines = np.flatnonzero(p.stage == 0)
        rows = p.output_rows[mines, 0]
        cap = model.effective_capacity[mines]
        out = np.maximum(np.minimum(cap, output_target(model, rows, cap)), 0.0)  # per mine
        p.output_t[mines] = out
        s.qty_t[rows] += out
        model.mined_t_total += out.sum()
        opex = out * variable_cost_usd_per_kg(model, mines) / KG_PER_T
        model.charge_opex(mines, opex)


class Processor(Producer):
    """A separation plant or magnet plant: buys inputs, processes, sells outputs."""

    @staticmethod
    def plan_inputs(model: RareEarthModel, product: int) -> None:
        """Set desired purchases of ``product`` for every processor that uses it."""
        w, p, s = model.world, model.world.producers, model.world.stocks
        rows_all = p.input_rows[:, product]
        users = (rows_all >= 0).nonzero()[0]
        if len(users) == 0:
            return
        rows = rows_all[users]
        cap = model.effective_capacity[users]
        cover = model.config.market.input_cover_months
        if product == 0:
            coef = np.ones(len(users))
            planned = np.minimum(cap, Processor._separation_target(model, users))
        else:
            coef = w.magnet_recipe[product - 1] * np.ones(len(users))
            out_rows = p.output_rows[users, w.products.index("magnet")]
            planned = np.minimum(cap, output_target(model, out_rows, cap))
        margin_ok = Producer.unit_margin(model, market_view=False, producers=users) > 0
        planned = np.where(margin_ok, planned, 0.0)
        target = (planned + model.months_to_ticks(cover) * cap) * coef
        s.desired_t[rows] = np.maximum(target - s.qty_t[rows] - model.in_transit_t[rows], 0)

    @staticmethod
    def _separation_target(model: RareEarthModel, users: np.ndarray) -> np.ndarray:
        """Per plant: t of input to process so that its most-demanded oxide meets its target.

        Joint production: output follows the oxide that needs the most throughput, and the
        others pile up or sell cheaply (the balance problem).
        """
        w, p, s = model.world, model.world.producers, model.world.stocks
        n_e = len(w.layout.elements)
        comp = s.attrs[p.input_rows[users, 0], w.layout.composition]  # plant × element
        comp = np.where(comp.sum(axis=1, keepdims=True) > 0, comp, model.typical_ore_composition)
        yields = comp * p.recovery[users]  # plant × element
        out_rows = p.output_rows[users, 1 : 1 + n_e]  # plant × element
        cap = model.effective_capacity[users]
        rows = np.maximum(out_rows, 0)
        wanted = output_target(model, rows.ravel(), (cap[:, None] * yields).ravel())
        wanted = wanted.reshape(out_rows.shape)  # plant × element, t oxide
        with np.errstate(divide="ignore", invalid="ignore"):
            through = np.where((yields > 0) & (out_rows >= 0), wanted / yields, 0.0)
        return through.max(axis=1)

    @staticmethod
    def _processing_covered(model: RareEarthModel, plants: np.ndarray) -> np.ndarray:
        """Per plant: expected value of the oxides from a kg of its input covers processing."""
        w, p, s = model.world, model.world.producers, model.world.stocks
        n_e = len(w.layout.elements)
        comp = s.attrs[p.input_rows[plants, 0], w.layout.composition]
        out = p.output_rows[plants, 1 : 1 + n_e]
        price = np.where(out >= 0, s.expected_price_usd_per_kg[np.maximum(out, 0)], 0.0)
        value = (comp * p.recovery[plants] * price).sum(axis=1)
        return value >= p.unit_cost_usd_per_kg[plants]

    @staticmethod
    def separate(model: RareEarthModel) -> None:
        """Separation plants turn concentrate into oxides (joint production, recovery losses)."""
        w, p, s = model.world, model.world.producers, model.world.stocks
        n_e = len(w.layout.elements)
        plants = np.flatnonzero(p.stage == 1)
        if len(plants) == 0:
            return
        in_rows = p.input_rows[plants, 0]
        cap = model.effective_capacity[plants]
        room = Processor._separation_target(model, plants)
        value_ok = Processor._processing_covered(model, plants)
        through = np.maximum(np.minimum(np.minimum(cap, s.qty_t[in_rows]), room), 0.0)
        through = np.where(value_ok, through, 0.0)  # per plant, t REO input
        comp = s.attrs[in_rows, w.layout.composition]
        yields = comp * p.recovery[plants]  # plant × element
        out_rows = p.output_rows[plants, 1 : 1 + n_e]
        made = through[:, None] * yields  # plant × element
        s.qty_t[in_rows] -= through
        model.separation_losses_t_total += (through - made.sum(axis=1)).sum()
        out_attrs = provenance.processed(s.attrs[in_rows], w.layout, p.country[plants], w.china)
        has = (out_rows >= 0) & (made > 0)
        plant_idx, element = np.nonzero(has)
        lot_attrs = out_attrs[plant_idx].copy()
        lot_attrs[:, w.layout.composition] = np.eye(n_e)[element]
        q = made[plant_idx, element]
        provenance.mix_into(
            s.qty_t, s.attrs, out_rows[plant_idx, element], q, q[:, None] * lot_attrs
        )
        p.output_t[plants] = through
        model.charge_opex(plants, through * variable_cost_usd_per_kg(model, plants) / KG_PER_T)

    @staticmethod
    def make_magnets(model: RareEarthModel) -> None:
        """Magnet plants combine oxides in fixed proportions (Leontief) into NdFeB."""
        w, p, s = model.world, model.world.producers, model.world.stocks
        n_e = len(w.layout.elements)
        plants = np.flatnonzero(p.stage == 2)
        if len(plants) == 0:
            return
        magnet = w.products.index("magnet")
        recipe = w.magnet_recipe  # per element
        used = np.flatnonzero(recipe > 0)
        in_rows = p.input_rows[plants][:, 1 : 1 + n_e][:, used]  # plant × used element
        possible = (s.qty_t[in_rows] / recipe[used]).min(axis=1)  # per plant, t magnet
        cap = model.effective_capacity[plants]
        out_rows = p.output_rows[plants, magnet]
        room = output_target(model, out_rows, cap)
        price_ok = s.expected_price_usd_per_kg[out_rows] >= p.unit_cost_usd_per_kg[plants]
        made = np.maximum(np.minimum(np.minimum(cap, possible), room), 0.0)
        made = np.where(price_ok, made, 0.0)  # per plant, t magnet
        use = made[:, None] * recipe[used]  # plant × used element, t oxide
        reo_in = use.sum(axis=1)
        mixed = (use[:, :, None] * s.attrs[in_rows]).sum(axis=1)  # plant × attribute mass
        mixed = np.where(
            reo_in[:, None] > 0, mixed / np.maximum(reo_in, 1e-300)[:, None], s.attrs[out_rows]
        )
        lot_attrs = provenance.processed(mixed, w.layout, p.country[plants], w.china)
        lot_attrs[:, w.layout.composition] = recipe / recipe.sum()
        s.qty_t[in_rows] = np.maximum(s.qty_t[in_rows] - use, 0.0)
        provenance.mix_into(s.qty_t, s.attrs, out_rows, made, made[:, None] * lot_attrs)
        p.output_t[plants] = made
        model.charge_opex(plants, made * variable_cost_usd_per_kg(model, plants) / KG_PER_T)


class Buyer(mesa.Agent):
    """An end user of one product; its state is row ``index`` of ``model.world.buyers``."""

    model: RareEarthModel

    def __init__(self, model: RareEarthModel, index: int) -> None:
        super().__init__(model)
        self.index = index
        self.name: str = model.world.buyers.names[index]

    @property
    def country(self) -> str:
        """Country code."""
        return self.model.world.layout.countries[self.model.world.buyers.country[self.index]]

    @property
    def bloc(self) -> str:
        """'alliance', 'china' or 'other'."""
        w = self.model.world
        return BLOCS[w.country_bloc[w.buyers.country[self.index]]]

    @property
    def product(self) -> str:
        """Product bought."""
        return self.model.world.products[self.model.world.buyers.product[self.index]]

    @property
    def sector(self) -> str:
        """End-use sector."""
        return self.model.world.buyers.sectors[self.index]

    @property
    def inventory_t(self) -> float:
        """Tonnes on hand."""
        return float(self.model.world.stocks.qty_t[self.model.world.buyers.row[self.index]])

    @property
    def expected_landed_price_usd_per_kg(self) -> float:
        """Smoothed all-in price paid."""
        w = self.model.world
        return float(w.stocks.expected_price_usd_per_kg[w.buyers.row[self.index]])

    @property
    def compliant_share(self) -> float:
        """Share of its inventory no Chinese mine or processor contributed to."""
        w = self.model.world
        return float(provenance.compliant_share(w.stocks.attrs[w.buyers.row[self.index]], w.layout))

    # ------------------------------------------------------------ rules over all buyers

    @staticmethod
    def adapt_demand(model: RareEarthModel) -> None:
        """This tick's need: base demand × growth × price response × substitution (§7.4)."""
        b, s = model.world.buyers, model.world.stocks
        tpy = model.config.ticks_per_year
        years = model.tick / tpy
        ratio = s.expected_price_usd_per_kg[b.row] / b.reference_price  # per buyer
        high = ratio > b.substitution_threshold
        step = b.substitution_rate_per_yr / tpy
        b.substitution_factor = np.where(
            high, b.substitution_factor * (1 - step), b.substitution_factor
        )
        b.substitution_low = np.minimum(b.substitution_low, b.substitution_factor)
        ceiling = b.substitution_low + b.substitution_recovery * (1 - b.substitution_low)
        recovered = np.minimum(b.substitution_factor + step * b.substitution_recovery, ceiling)
        b.substitution_factor = np.where(
            high, b.substitution_factor, np.maximum(b.substitution_factor, recovered)
        )
        price_response = np.minimum(np.maximum(ratio, 1e-6) ** -b.elasticity, 2.0)
        growth = (1 + b.growth_rate_per_yr) ** years
        b.need_t = (
            b.base_demand_t_per_yr
            / tpy
            * growth
            * price_response
            * b.substitution_factor
            * model.policy.demand_factor
        )

    @staticmethod
    def plan_orders(model: RareEarthModel) -> None:
        """Desired purchase: this tick's need plus a share of the gap to the stock target."""
        b, s = model.world.buyers, model.world.stocks
        target = b.need_t * model.months_to_ticks(b.inventory_target_months)
        gap = target - s.qty_t[b.row] - model.in_transit_t[b.row]
        adjust = model.months_to_ticks(model.config.market.order_adjust_months)
        s.desired_t[b.row] = np.maximum(b.need_t + gap / adjust, 0.0)

    @staticmethod
    def consume(model: RareEarthModel) -> np.ndarray:
        """Consume from inventory; returns per buyer × attribute the consumed attribute mass."""
        b, s = model.world.buyers, model.world.stocks
        used = np.minimum(b.need_t, s.qty_t[b.row])
        b.consumed_t = used
        s.qty_t[b.row] -= used
        reo = used * model.world.reo_content[b.product]
        model.consumed_reo_t_total += reo.sum()
        rows = b.row  # buyers' stock rows, one block as the world builds them: read in place
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
            rows = slice(rows[0], rows[-1] + 1)
        return used[:, None] * s.attrs[rows]


class StrategicReserve(mesa.Agent):
    """The strategic reserve (MODEL.md §4): buys compliant material cheaply, releases in need.

    It owns two stock rows — purchases arrive in its input row; releases move to its output row,
    which sells on the network like any seller — and an account funded by a loan and private
    capital. It also holds what ``offtake`` price floors buy. Without a reserve in the scenario
    the agent exists but has no rows and does nothing.
    """

    model: RareEarthModel

    def __init__(self, model: RareEarthModel) -> None:
        super().__init__(model)
        self.name = "strategic_reserve"
        self.cash_usd_million = 0.0
        self.spent_usd_million = 0.0  # cumulative purchases, the capital drawn
        self.tick_released_t = 0.0

    @property
    def rows(self) -> tuple[int, int] | None:
        """(input, output) stock rows, or None."""
        return self.model.world.reserve_rows

    @property
    def stock_t(self) -> float:
        """Tonnes held (bought and not yet sold)."""
        if self.rows is None:
            return 0.0
        return float(self.model.world.stocks.qty_t[list(self.rows)].sum())

    @property
    def country(self) -> str:
        """Country the reserve sits in (for transport and tariffs)."""
        if self.rows is None:
            return ""
        w = self.model.world
        return w.layout.countries[w.stocks.country[self.rows[0]]]

    @property
    def bloc(self) -> str:
        """Bloc of the reserve's country."""
        w = self.model.world
        return BLOCS[w.country_bloc[w.layout.countries.index(self.country)]] if self.rows else ""

    @property
    def product(self) -> str:
        """Product held."""
        if self.rows is None:
            return ""
        return self.model.world.products[self.model.world.stocks.product[self.rows[0]]]

    def owner_need_t(self) -> float:
        """The owner's end-use need of the reserve's product per tick, in that product.

        An oxide also counts through the magnets its owner's buyers need (recipe content).
        """
        model = self.model
        w, cfg = model.world, model.config.policies.reserve
        b = w.buyers
        product = w.stocks.product[self.rows[0]]
        mine = party_mask(cfg.owner, b.country, model)
        need = b.need_t[mine & (b.product == product)].sum()
        if w.products[product].startswith("oxide:") and model.config.magnet is not None:
            magnet = w.products.index("magnet")
            need += w.magnet_recipe[product - 1] * b.need_t[mine & (b.product == magnet)].sum()
        return float(need)

    def target_t(self) -> float:
        """Target stock: ``target_months`` of the owner's need."""
        cfg = self.model.config.policies.reserve
        return self.model.months_to_ticks(cfg.target_months) * self.owner_need_t()

    @staticmethod
    def _compliant_stock(model: RareEarthModel, product: int) -> np.ndarray:
        """Producers' output rows of a product holding compliant stock (what a reserve buys)."""
        s = model.world.stocks
        return np.flatnonzero(
            (s.product == product)
            & (s.role == OUTPUT)
            & (s.owner_kind != RESERVE)
            & (s.qty_t > 0)
            & model.compliant_rows(np.arange(len(s.qty_t)))
        )

    @staticmethod
    def seed(model: RareEarthModel) -> None:
        """Put the reserve's ``initial_stock_t`` in place (at the start, after the warm-up).

        The stock was bought before the start: it is compliant, with the mass-weighted
        provenance of the compliant sellers of the product (or, if there are none, mined and
        processed in the reserve's country), and the capital it drew is spent at the buy
        trigger price, so it bears carrying cost from the start.
        """
        self = model.reserve
        cfg = model.config.policies.reserve
        if self.rows is None or cfg is None or cfg.initial_stock_t <= 0:
            return
        w, s = model.world, model.world.stocks
        held_in = self.rows[0]
        product = s.product[held_in]
        sellers = StrategicReserve._compliant_stock(model, product)
        if len(sellers):
            weight = s.qty_t[sellers]
            attrs = (weight[:, None] * s.attrs[sellers]).sum(axis=0) / weight.sum()
        else:
            attrs = np.zeros(w.layout.width)
            country = s.country[held_in]
            attrs[w.layout.origin_cell(country, country)] = 1.0
            attrs[w.layout.composition] = np.eye(len(w.layout.elements))[product - 1]
        provenance.mix_into(
            s.qty_t,
            s.attrs,
            np.array([held_in]),
            np.array([cfg.initial_stock_t]),
            cfg.initial_stock_t * attrs[None, :],
        )
        self.spent_usd_million = cfg.initial_stock_t * cfg.buy_trigger_usd_per_kg / KG_PER_T

    @staticmethod
    def plan(model: RareEarthModel) -> None:
        """Buy rule (desired purchase) and release rule (move stock to the selling row)."""
        self = model.reserve
        cfg = model.config.policies.reserve
        self.tick_released_t = 0.0
        if self.rows is None or cfg is None or model.warming_up:
            return
        s = model.world.stocks
        held_in, held_out = self.rows
        model.row_reservation[held_in] = cfg.buy_trigger_usd_per_kg  # buys only below it
        model.row_min_compliant[held_in] = 1.0  # and only compliant material
        target = self.target_t()
        budget = cfg.loan_usd_million + cfg.private_usd_million - self.spent_usd_million
        room = max(target - s.qty_t[held_in] - model.in_transit_t[held_in], 0.0)
        step = cfg.max_buy_share_per_month * target * 12 / model.config.ticks_per_year
        # it pays at most the buy trigger (its reservation price), so this never overspends
        affordable = max(budget, 0.0) * KG_PER_T / cfg.buy_trigger_usd_per_kg
        s.desired_t[held_in] = min(room, step, affordable)
        owner_price = model.owner_landed_price(cfg.owner, s.product[held_in])
        shortage = model.last_reserve_shortage  # of the reserve's product, owner's bloc
        if (
            owner_price >= cfg.release_trigger_usd_per_kg
            or shortage > cfg.release_shortage_threshold
        ):
            release_step = (
                cfg.max_release_share_per_month * target * 12 / model.config.ticks_per_year
            )
            release = min(s.qty_t[held_in], release_step)
            if release > 0:
                attrs = s.attrs[held_in][None, :]
                provenance.mix_into(
                    s.qty_t, s.attrs, np.array([held_out]), np.array([release]), release * attrs
                )
                s.qty_t[held_in] -= release
                s.ask_usd_per_kg[held_out] = max(
                    model.expected_market_price[s.product[held_out]], 1e-6
                )
                self.tick_released_t = release

    @staticmethod
    def offtake(model: RareEarthModel, product: int) -> None:
        """Offtake floors: the alliance buys a volume at F from compliant sellers, pro rata."""
        if model.reserve.rows is None or model.warming_up:
            return
        w, s = model.world, model.world.stocks
        held_in = model.reserve.rows[0]
        for floor in model.config.policies.price_floors:
            if floor.mechanism != "offtake" or w.products.index(floor.product) != product:
                continue
            sellers = StrategicReserve._compliant_stock(model, product)
            if len(sellers) == 0:
                continue
            volume = floor.offtake_t_per_yr / model.config.ticks_per_year
            take = s.qty_t[sellers] * min(1.0, volume / s.qty_t[sellers].sum())  # per seller
            provenance.mix_into(
                s.qty_t,
                s.attrs,
                np.full(len(sellers), held_in),
                take,
                take[:, None] * s.attrs[sellers],
            )
            s.qty_t[sellers] -= take
            s.sold_t[sellers] += take
            paid = take * floor.level_usd_per_kg / KG_PER_T
            model.tick_in += np.bincount(
                model.row_account[sellers], paid, minlength=len(model.tick_in)
            )
            model.tick_fiscal["offtake_purchases"] += paid.sum()

    @staticmethod
    def carry(model: RareEarthModel) -> None:
        """Carrying cost on the capital drawn, paid from the reserve's account."""
        self = model.reserve
        cfg = model.config.policies.reserve
        if self.rows is None or cfg is None:
            return
        spend = model.tick_out[-1]
        self.spent_usd_million += spend
        cost = (
            cfg.carrying_cost_per_yr
            / model.config.ticks_per_year
            * max(self.spent_usd_million, 0.0)
        )
        self.cash_usd_million -= cost
        model.tick_fiscal["reserve_carrying_cost"] += cost
