"""An independent spatial price equilibrium solver for the benchmark of MODEL.md §11.2.

It reads **only the scenario** (``abm.scenario``: the pydantic schema) and none of the model's
code, so that the benchmark cannot inherit the model's mistakes. The distance-class transport
rule and the tariff matching rule are re-implemented here from the schema's documentation.

The world
---------
Nodes are the mines, the separation plants, the magnet plants (if the scenario has the magnet
stage) and the end buyers. Links are the model's default trade rule: every seller of a product
to every buyer of it (a plant never buys its own output). All quantities are per tick (t), all
prices US$/kg, so LP duals are directly prices in US$/kg.

Variables (all >= 0):

- ``s_m``  t concentrate (REO) mined by mine m, cost ``cash_cost`` per kg, ``s_m <= K_m``;
- ``u_p``  t concentrate processed by separation plant p, cost ``processing_cost`` per kg of
  input, ``u_p <= K_p`` (separation capacity is t REO *input*);
- ``v_q``  t magnet made by magnet plant q, cost ``processing_cost`` per kg magnet, ``v_q <= K_q``;
- ``d_pe`` t oxide e disposed of by plant p at zero cost (free disposal, only relevant with
  joint production — the benchmark worlds have one element, so it stays 0);
- ``x_l``  t shipped on link l (seller → buyer, one product), cost transport(l) + wedge(l).

Node balances (equalities; the dual of each is the price at that node):

- mine m:            ``s_m − Σ_l∈out(m) x_l = 0``                → FOB concentrate price;
- plant p input:     ``Σ_l∈in(p) x_l − u_p = 0``                 → landed concentrate price;
- plant p oxide e:   ``r_pe u_p − d_pe − Σ_l∈out(p,e) x_l = 0``  → FOB oxide price;
- magnet q input e:  ``Σ_l∈in(q,e) x_l − a_e v_q = 0``           → landed oxide price (Leontief);
- magnet q output:   ``v_q − Σ_l∈out(q) x_l = 0``                → FOB magnet price;
- buyer b:           ``Σ_l∈in(b) x_l = D_b``                     → landed price paid.

Demand is fixed (elasticity 0, no growth, no substitution): ``D_b = base_demand / ticks per
year``. The LP minimises the total resource cost of meeting it; its optimum with these duals is
the competitive spatial price equilibrium (Samuelson 1952; Takayama & Judge 1971): every
seller's price is its marginal cost plus a scarcity rent where its capacity binds (the rent is
the dual of the capacity bound), and every used link satisfies
``landed_buyer = FOB_seller·(1+duty)·(1+tariff) + transport``, every unused one ``<=``.

Tariffs and duties
------------------
They are ad valorem on the seller's price, so the wedge they put on a link is
``((1+duty)(1+tariff) − 1) × FOB_seller`` — a price, not a cost, and therefore not known
before the equilibrium is. Using ``rate × unit cost`` as a per-kg wedge would be wrong as soon
as a taxed seller earns a rent (or sells to a buyer whose alternative sets the price).
Tariff revenue is a transfer, not a resource cost, so the equilibrium is not the LP's welfare
optimum with the wedge included; it is the fixed point of the standard diagonalisation
(Takayama–Judge iterative method): solve the LP with the wedges implied by the current FOB
prices, read the new FOB prices from its duals, repeat until they no longer change. At a fixed
point the LP's optimality conditions *are* the equilibrium conditions with ad valorem terms
(``λ_b <= P_s·(1+d)(1+τ) + t_sb``, with equality on links that carry flow), and
:func:`solve` re-checks those conditions explicitly on the final solution and raises if any
fails, so a non-converged iteration cannot pass silently.

Uniqueness: :attr:`Equilibrium.link_gap` gives, per unused link, by how much (US$/kg) it is
more expensive than the buyer's price; benchmark worlds are built so that every unused link has
a clear gap, which makes the optimal flows unique.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linprog

from abm.scenario import Scenario

TOL_USD = 1e-6  # US$/kg: slack allowed when checking the equilibrium conditions


@dataclass
class Link:
    """A trade link: seller → buyer for one product."""

    seller: str
    buyer: str
    product: str
    seller_country: str
    buyer_country: str
    transport_usd_per_kg: float
    ad_valorem: float  # (1+duty)(1+tariff) − 1


@dataclass
class Equilibrium:
    """The spatial price equilibrium of a scenario (quantities per tick, prices US$/kg)."""

    links: list[Link]
    flow_t: np.ndarray  # per link, t per tick
    fob_usd_per_kg: dict[str, float]  # per seller: price at the seller's node
    landed_usd_per_kg: dict[str, float]  # per buyer (end buyers and plants' inputs)
    output_t: dict[str, float]  # per producer: t mined / t input processed / t magnet made
    capacity_t: dict[str, float]  # per producer: capacity per tick
    rent_usd_per_kg: dict[str, float]  # per producer: dual of its capacity bound
    link_gap: np.ndarray  # per link: P_s(1+adv) + t − λ_b (>= 0; 0 on used links)
    uniqueness_margin_usd_per_kg: float  # smallest extra cost of an unused link (see below)
    iterations: int
    objective_usd: float
    sold_t: dict[str, float] = field(default_factory=dict)  # per seller: t sold per tick

    def flow(self, seller: str, buyer: str) -> float:
        """Flow on a link (0 if there is no such link)."""
        return float(
            sum(
                f
                for lk, f in zip(self.links, self.flow_t, strict=True)
                if lk.seller == seller and lk.buyer == buyer
            )
        )

    def table(self) -> str:
        """A readable summary (for reports and test failure messages)."""
        lines = ["seller           FOB US$/kg   sold t/tick   rent"]
        for name, price in self.fob_usd_per_kg.items():
            lines.append(
                f"{name:<16} {price:10.3f} {self.sold_t.get(name, 0.0):12.2f}"
                f" {self.rent_usd_per_kg.get(name, 0.0):8.3f}"
            )
        lines.append("buyer            landed US$/kg")
        for name, price in self.landed_usd_per_kg.items():
            lines.append(f"{name:<16} {price:10.3f}")
        lines.append("flows (t/tick)")
        for lk, f in zip(self.links, self.flow_t, strict=True):
            if f > 1e-9:
                lines.append(f"  {lk.seller} -> {lk.buyer} [{lk.product}]: {f:.2f}")
        return "\n".join(lines)


# ------------------------------------------------------------------ the world's terms


def bloc(s: Scenario, country: str) -> str:
    """Bloc of a country: 'china', 'alliance' or 'other' (schema docs of ``china``/``alliance``)."""
    if country == s.china:
        return "china"
    return "alliance" if country in s.alliance else "other"


def _matches(s: Scenario, party: str, country: str) -> bool:
    """A policy party is a country code, a bloc name or 'any'."""
    return party == "any" or party == country or party == bloc(s, country)


def transport_usd_per_kg(s: Scenario, origin: str, destination: str) -> float:
    """Transport cost by distance class (same country, same region, else), or an override."""
    for o in s.transport.overrides:
        if o.origin == origin and o.destination == destination:
            cost = o.cost_usd_per_kg
            break
    else:
        if origin == destination:
            cost = s.transport.domestic.cost_usd_per_kg
        elif s.countries[origin].region == s.countries[destination].region:
            cost = s.transport.regional.cost_usd_per_kg
        else:
            cost = s.transport.intercontinental.cost_usd_per_kg
    pref = s.policies.preference
    if (
        origin != destination
        and bloc(s, origin) == "alliance"
        and bloc(s, destination) == "alliance"
    ):
        cost *= 1.0 - pref.transport_discount_share
    return cost


def ad_valorem(s: Scenario, origin: str, destination: str, product: str) -> float:
    """Combined ad valorem charge on the seller's price: (1+duty)(1+tariff) − 1.

    Tariffs apply to cross-border trade from ``origin`` into ``destination`` (the highest
    matching rate), not between two alliance members when internal tariffs are waived. Export
    duties apply to what China's sellers sell abroad.
    """
    pol = s.policies
    tariff = 0.0
    if origin != destination:
        for t in pol.tariffs:
            if (
                _matches(s, t.origin, origin)
                and _matches(s, t.destination, destination)
                and t.product in ("any", product)
            ):
                tariff = max(tariff, t.rate)
        if (
            pol.preference.zero_internal_tariffs
            and bloc(s, origin) == "alliance"
            and bloc(s, destination) == "alliance"
        ):
            tariff = 0.0
    duty = 0.0
    if origin == s.china and destination != s.china:
        for d in pol.export_duties:
            if d.product in ("any", product):
                duty = max(duty, d.rate)
    return (1.0 + duty) * (1.0 + tariff) - 1.0


def check_benchmark_world(s: Scenario) -> None:
    """Raise if the scenario has features the benchmark does not model (MODEL.md §11.2)."""
    problems = []
    for b in s.buyers:
        if b.elasticity != 0 or b.growth_rate_per_yr != 0:
            problems.append(f"buyer {b.name}: demand must be fixed (elasticity 0, no growth)")
        if b.security_premium_share != 0 or b.switching_cost_usd_per_kg != 0:
            problems.append(f"buyer {b.name}: security premium and switching cost must be 0")
        if b.min_compliant_share != 0:
            problems.append(f"buyer {b.name}: compliance requirement not modelled")
    for p in [*s.mines, *s.processors]:
        if p.status != "operating":
            problems.append(f"{p.name}: only operating producers are modelled")
    pol = s.policies
    if pol.export_controls or pol.price_floors or pol.reserve is not None:
        problems.append("export controls, price floors and reserves are not modelled")
    if pol.compliance.min_compliant_share or pol.compliance.ban_allied_mines_to_china:
        problems.append("compliance rules are not modelled")
    if pol.china_pricing.mode != "market":
        problems.append("strategic pricing is not modelled")
    if s.events:
        problems.append("events are not modelled")
    if s.mining_quota_t_per_yr or s.separation_quota_t_per_yr:
        problems.append("national quotas are not modelled")
    if s.investment.enabled and s.projects:
        problems.append("investment must be off (projects would add capacity)")
    if problems:
        raise ValueError("not a benchmark world: " + "; ".join(problems))


# ------------------------------------------------------------------ the LP


class _LP:
    """Column and row bookkeeping for the LP."""

    def __init__(self) -> None:
        self.cost: list[float] = []
        self.upper: list[float | None] = []
        self.rows: dict[str, dict[int, float]] = {}
        self.rhs: dict[str, float] = {}

    def var(self, cost: float, upper: float | None = None) -> int:
        self.cost.append(cost)
        self.upper.append(upper)
        return len(self.cost) - 1

    def add(self, row: str, col: int, coef: float) -> None:
        self.rows.setdefault(row, {})
        self.rows[row][col] = self.rows[row].get(col, 0.0) + coef
        self.rhs.setdefault(row, 0.0)

    def solve(self):
        names = list(self.rows)
        a = np.zeros((len(names), len(self.cost)))
        for i, name in enumerate(names):
            for j, coef in self.rows[name].items():
                a[i, j] = coef
        b = np.array([self.rhs[n] for n in names])
        res = linprog(
            np.array(self.cost),
            A_eq=a,
            b_eq=b,
            bounds=[(0.0, u) for u in self.upper],
            method="highs",
        )
        if res.status != 0:
            raise ValueError(f"benchmark LP not solved: {res.message}")
        return res, dict(zip(names, res.eqlin.marginals, strict=True))


def _build_links(s: Scenario) -> list[Link]:
    """Every seller of a product to every buyer of it (the model's default rule)."""
    sellers: dict[str, list[tuple[str, str]]] = {}  # product -> [(name, country)]
    buyers: dict[str, list[tuple[str, str]]] = {}
    for m in s.mines:
        sellers.setdefault("concentrate", []).append((m.name, m.country))
    for p in s.processors:
        if p.stage == "separation":
            buyers.setdefault("concentrate", []).append((p.name, p.country))
            for e, r in p.recovery.items():
                if r > 0:
                    sellers.setdefault(f"oxide:{e}", []).append((p.name, p.country))
        else:
            assert s.magnet is not None
            for e, a in s.magnet.recipe_t_per_t.items():
                if a > 0:
                    buyers.setdefault(f"oxide:{e}", []).append((p.name, p.country))
            sellers.setdefault("magnet", []).append((p.name, p.country))
    for b in s.buyers:
        buyers.setdefault(b.product, []).append((b.name, b.country))
    links = []
    for product in s.products:
        for buyer, bc in buyers.get(product, []):
            for seller, sc in sellers.get(product, []):
                if seller == buyer:
                    continue
                links.append(
                    Link(
                        seller,
                        buyer,
                        product,
                        sc,
                        bc,
                        transport_usd_per_kg(s, sc, bc),
                        ad_valorem(s, sc, bc, product),
                    )
                )
    return links


def _solve_once(s: Scenario, links: list[Link], fob: dict[str, float]):
    """Solve the LP with ad valorem wedges evaluated at the given FOB prices."""
    tpy = s.ticks_per_year
    lp = _LP()
    cap: dict[str, float] = {}
    prod_col: dict[str, int] = {}
    link_col = []
    for lk in links:
        wedge = lk.ad_valorem * fob.get(f"{lk.seller}:{lk.product}", 0.0)
        link_col.append(lp.var(lk.transport_usd_per_kg + wedge))
    for m in s.mines:
        cap[m.name] = m.capacity_t_per_yr / tpy
        prod_col[m.name] = j = lp.var(m.cash_cost_usd_per_kg, cap[m.name])
        lp.add(f"out:{m.name}:concentrate", j, 1.0)
    for p in s.processors:
        cap[p.name] = p.capacity_t_per_yr / tpy
        prod_col[p.name] = j = lp.var(p.processing_cost_usd_per_kg, cap[p.name])
        if p.stage == "separation":
            lp.add(f"in:{p.name}:concentrate", j, -1.0)
            for e, r in p.recovery.items():
                if r > 0:
                    lp.add(f"out:{p.name}:oxide:{e}", j, r)
                    lp.add(f"out:{p.name}:oxide:{e}", lp.var(0.0), -1.0)  # free disposal
        else:
            assert s.magnet is not None
            for e, a in s.magnet.recipe_t_per_t.items():
                if a > 0:
                    lp.add(f"in:{p.name}:oxide:{e}", j, -a)
            lp.add(f"out:{p.name}:magnet", j, 1.0)
    end_buyers = {b.name for b in s.buyers}
    for b in s.buyers:
        lp.rows.setdefault(f"in:{b.name}:{b.product}", {})
        lp.rhs[f"in:{b.name}:{b.product}"] = b.base_demand_t_per_yr / tpy
    for lk, j in zip(links, link_col, strict=True):
        lp.add(f"out:{lk.seller}:{lk.product}", j, -1.0)
        lp.add(f"in:{lk.buyer}:{lk.product}", j, 1.0)
    res, duals = lp.solve()
    x = res.x
    # duals: d objective / d rhs. For "production − shipments = 0" at a seller node, raising the
    # right-hand side by one unit means one more unit produced and not sold: its marginal is the
    # node's price. For "receipts − use = 0" at a plant's input, one more unit received and not
    # used: the landed input price. For an end buyer, one more unit demanded: its landed price.
    new_fob: dict[str, float] = {}
    landed: dict[str, float] = {}
    for row, value in duals.items():
        kind, name, product = row.split(":", 2)
        if kind == "out":
            new_fob[f"{name}:{product}"] = float(value)
        else:
            landed[name if name in end_buyers else f"{name}:{product}"] = float(value)
    return x, link_col, prod_col, cap, new_fob, landed, float(res.fun)


def _uniqueness_margin(
    s: Scenario,
    links: list[Link],
    flow: np.ndarray,
    price: dict[str, float],
    landed_at: dict[int, float],
) -> float:
    """Smallest amount (US$/kg) by which an unused link is dearer than its buyer's price.

    A seller that sells nothing is priced at its supply price at zero output (its unit cost
    given the cheapest landed input), since its dual is only a bound. A positive margin means
    no unused link ties with a used one, so the optimal flows are unique (for the one-element
    worlds of the benchmark; with joint production this is only indicative).
    """
    traded = {f"{lk.seller}:{lk.product}" for lk, f in zip(links, flow, strict=True) if f > 1e-9}
    supply = dict(price)
    for m in s.mines:
        if f"{m.name}:concentrate" not in traded:
            supply[f"{m.name}:concentrate"] = m.cash_cost_usd_per_kg
    best_input: dict[str, float] = {}
    for lk in links:
        if lk.product == "concentrate":
            cost = supply[f"{lk.seller}:concentrate"] * (1 + lk.ad_valorem)
            cost += lk.transport_usd_per_kg
            best_input[lk.buyer] = min(best_input.get(lk.buyer, np.inf), cost)
    for p in s.processors:
        if p.stage != "separation":
            continue
        recovered = [r for r in p.recovery.values() if r > 0]
        for e, r in p.recovery.items():
            key = f"{p.name}:oxide:{e}"
            if r > 0 and key not in traded and len(recovered) == 1:
                inp = best_input.get(p.name, np.inf)
                supply[key] = (p.processing_cost_usd_per_kg + inp) / r
    gaps = [
        supply[f"{lk.seller}:{lk.product}"] * (1 + lk.ad_valorem)
        + lk.transport_usd_per_kg
        - landed_at[id(lk)]
        for lk, f in zip(links, flow, strict=True)
        if f <= 1e-9
    ]
    return float(min(gaps, default=np.inf))


def solve(s: Scenario, max_iterations: int = 200) -> Equilibrium:
    """The spatial price equilibrium of a benchmark scenario (see the module docstring).

    Raises:
        ValueError: the scenario has features outside the benchmark, the LP is infeasible
            (capacity below demand), or the equilibrium conditions fail at the solution.

    """
    check_benchmark_world(s)
    links = _build_links(s)
    fob: dict[str, float] = {}
    iteration = 0
    while True:
        iteration += 1
        if iteration > max_iterations:
            raise ValueError("tariff wedges did not converge")
        x, link_col, prod_col, cap, new_fob, landed, objective = _solve_once(s, links, fob)
        change = max((abs(new_fob[k] - fob.get(k, 0.0)) for k in new_fob), default=0.0)
        fob = new_fob
        if change < 1e-9:
            break
    flow = np.array([x[j] for j in link_col])
    price = {f"{lk.seller}:{lk.product}": fob[f"{lk.seller}:{lk.product}"] for lk in links}
    landed_at = {}  # per link: the buyer's price
    for lk in links:
        landed_at[id(lk)] = landed.get(lk.buyer, landed.get(f"{lk.buyer}:{lk.product}"))
    gap = np.array(
        [
            price[f"{lk.seller}:{lk.product}"] * (1 + lk.ad_valorem)
            + lk.transport_usd_per_kg
            - landed_at[id(lk)]
            for lk in links
        ]
    )
    bad = (gap < -TOL_USD) | ((flow > 1e-9) & (np.abs(gap) > TOL_USD))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"equilibrium condition fails on {links[i].seller} -> {links[i].buyer}: "
            f"gap {gap[i]:.6g} US$/kg with flow {flow[i]:.6g} t"
        )
    margin = _uniqueness_margin(s, links, flow, price, landed_at)
    unit_cost = {m.name: m.cash_cost_usd_per_kg for m in s.mines}
    output = {name: float(x[j]) for name, j in prod_col.items()}
    rent = {}
    for m in s.mines:
        rent[m.name] = fob[f"{m.name}:concentrate"] - unit_cost[m.name]
    for p in s.processors:
        if p.stage == "separation":
            # Σ_e r_e·FOB_e = processing + landed input + rent (joint revenue per kg of input)
            value = sum(r * fob[f"{p.name}:oxide:{e}"] for e, r in p.recovery.items() if r > 0)
            rent[p.name] = value - p.processing_cost_usd_per_kg - landed[f"{p.name}:concentrate"]
        else:
            assert s.magnet is not None
            inputs = sum(
                a * landed[f"{p.name}:oxide:{e}"] for e, a in s.magnet.recipe_t_per_t.items() if a
            )
            rent[p.name] = fob[f"{p.name}:magnet"] - p.processing_cost_usd_per_kg - inputs
    # A seller that sells nothing has no market price: its dual is only a bound (anything at or
    # below its supply price is consistent), so it is reported as NaN, as is its rent.
    traded = {f"{lk.seller}:{lk.product}" for lk, f in zip(links, flow, strict=True) if f > 1e-9}
    fob = {k: (v if k in traded else float("nan")) for k, v in fob.items()}
    rent = {
        k: (v if any(t.startswith(f"{k}:") for t in traded) else float("nan"))
        for k, v in rent.items()
    }
    # public: keyed by seller name where the seller sells one product, else "seller:product"
    n_products: dict[str, int] = {}
    for key in fob:
        n_products[key.split(":", 1)[0]] = n_products.get(key.split(":", 1)[0], 0) + 1
    fob = {
        (k.split(":", 1)[0] if n_products[k.split(":", 1)[0]] == 1 else k): v
        for k, v in fob.items()
    }
    sold: dict[str, float] = {}
    for lk, f in zip(links, flow, strict=True):
        sold[lk.seller] = sold.get(lk.seller, 0.0) + float(f)
    return Equilibrium(
        links=links,
        flow_t=flow,
        fob_usd_per_kg=fob,
        landed_usd_per_kg=landed,
        output_t=output,
        capacity_t=cap,
        rent_usd_per_kg=rent,
        link_gap=gap,
        uniqueness_margin_usd_per_kg=margin,
        iterations=iteration,
        objective_usd=objective,
        sold_t=sold,
    )
