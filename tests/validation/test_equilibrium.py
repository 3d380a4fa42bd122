"""MODEL.md §11.2: the simulated steady state against the spatial price equilibrium.

Three one-element worlds (``configs/tests/equilibrium_{a,b,c}.yaml``): (a) slack capacity,
prices at marginal cost; (b) the Chinese separation plant's capacity binds (a scarcity rent);
(c) world (a) with a 25 % CN → US oxide tariff that moves the US buyers to the US plant. The
benchmark is the LP of ``tests/validation/equilibrium.py``, which reads only the scenario.

Benchmark settings (§11.2), passed as overrides: investment off and no exits (fixed
capacities: a producer sitting exactly at its cost floor is never idled), no price noise, loss
tolerance 0 (asks floored at unit cost), high logit β. The worlds' buyers have elasticity 0, no
growth, no security premium or switching cost and a substitution threshold far out of reach.

Measures, averaged over the last ``LAST`` ticks of a ``TICKS``-tick run:

- the volume-weighted landed price each buyer paid (end buyers and the plants' concentrate
  purchases) and the volume-weighted ask each seller received, against the LP's duals;
- tonnes sold per seller per tick, against the LP's flows (unique in these worlds: every
  unused link is at least US$1.5/kg dearer than the buyer's price — checked below).

Tolerances. At a true fixed point of the model with β = ``BETA_HIGH`` the only systematic gap
would be logit leakage: the cheapest alternative the LP rejects is ≥ US$1.5/kg dearer, i.e.
≥ 5.8 % of the logit's price scale (the initial oxide price, 26), so it keeps a share below
exp(−200·0.058) ≈ 1e-5. Stock targets and lead times do not bias a steady state (flows equal
consumption once inventories sit at target), and the loss tolerance of 0 lets a marginal seller
sit exactly at its cost. What a 24-tick average can still carry is a residual cycle of the
price rule (steps of at most κ = 0.1 in log price), so we allow **3 %** on prices and **2 % of
total demand** on each seller's tonnes — tight enough that a model parked anywhere else than
the equilibrium fails.

Where the model does not reach the benchmark the case is marked ``xfail(strict=True)`` with
the gap measured when the test was written (so a fix of the engine turns it into a failure
that asks for the mark to be removed). The default-β deviation is printed by
``test_default_beta_deviation`` (run ``pytest -s`` to see the table).
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from abm.runs import run
from abm.scenario import load_scenario
from tests.validation.equilibrium import Equilibrium, solve

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "tests"
TICKS = 360  # steady state is reached (or not) well before; see the report in the docstring
LAST = 24  # ticks averaged
BETA_HIGH = 200.0
BETA_DEFAULT = 8.0  # the schema's default
PRICE_TOL = 0.03  # relative, on every traded price
FLOW_TOL = 0.02  # share of total end demand, on every seller's tonnes per tick
BENCHMARK = [
    "investment.enabled=false",
    "investment.loss_months_to_idle=1000000",
    "investment.idle_months_to_close=1000000",
    "market.price_noise=0",
    "market.loss_tolerance=0",
]
WORLDS = ("a", "b", "c")


def _path(world: str) -> Path:
    return CONFIGS / f"equilibrium_{world}.yaml"


def _overrides(beta: float) -> list[str]:
    return [*BENCHMARK, f"market.logit_beta={beta}"]


@cache
def benchmark(world: str) -> Equilibrium:
    """The LP equilibrium of a world (β does not enter it)."""
    return solve(load_scenario(_path(world), _overrides(BETA_HIGH)))


@cache
def simulated(world: str, beta: float) -> dict[str, pd.Series]:
    """Volume-weighted prices and tonnes per tick over the last ``LAST`` ticks of a run."""
    result = run(_path(world), seed=0, ticks=TICKS, overrides=_overrides(beta))
    f = result.flows
    last = int(f.tick.max())

    def window(lo: int, hi: int) -> dict[str, pd.Series]:
        w = f[(f.tick > lo) & (f.tick <= hi)].assign(
            ask_value=lambda d: d.flow_t * d.ask_usd_per_kg,
            landed_value=lambda d: d.flow_t * d.landed_usd_per_kg,
        )
        n_ticks = hi - lo
        by_seller = w.groupby("seller")[["flow_t", "ask_value"]].sum()
        by_buyer = w.groupby("buyer")[["flow_t", "landed_value"]].sum()
        return {
            "ask": by_seller.ask_value / by_seller.flow_t,
            "sold": by_seller.flow_t / n_ticks,
            "landed": by_buyer.landed_value / by_buyer.flow_t,
            "bought": by_buyer.flow_t / n_ticks,
        }

    out = window(last - LAST, last)
    before = window(last - 2 * LAST, last - LAST)
    out["drift"] = (out["landed"] / before["landed"] - 1).abs()
    return out


def lp_landed(eq: Equilibrium) -> dict[str, float]:
    """LP landed price per buyer name (plants' concentrate purchases under the plant's name)."""
    return {k.removesuffix(":concentrate"): v for k, v in eq.landed_usd_per_kg.items()}


def price_gaps(world: str, beta: float) -> dict[str, float]:
    """Relative gap of each traded price (buyers landed, sellers' asks) to the LP."""
    eq, sim = benchmark(world), simulated(world, beta)
    buying = {
        lk.buyer.removesuffix(":concentrate")
        for lk, f in zip(eq.links, eq.flow_t, strict=True)
        if f > 1e-9
    }
    gaps = {}
    for buyer, price in lp_landed(eq).items():
        if buyer in buying:  # buyers the LP has trading (an idle plant's dual is only a bound)
            gaps[f"landed {buyer}"] = abs(sim["landed"].get(buyer, math.nan) / price - 1)
    for seller, price in eq.fob_usd_per_kg.items():
        if math.isfinite(price):  # sellers the LP has trading
            gaps[f"ask {seller}"] = abs(sim["ask"].get(seller, math.nan) / price - 1)
    return gaps


def flow_gaps(world: str, beta: float) -> dict[str, float]:
    """Gap of each seller's tonnes per tick to the LP, as a share of total end demand."""
    eq, sim = benchmark(world), simulated(world, beta)
    s = load_scenario(_path(world), _overrides(beta))
    demand = sum(b.base_demand_t_per_yr for b in s.buyers) / s.ticks_per_year
    sellers = set(eq.sold_t) | set(sim["sold"].index)
    return {
        seller: abs(float(sim["sold"].get(seller, 0.0)) - eq.sold_t.get(seller, 0.0)) / demand
        for seller in sorted(sellers)
    }


def _describe(world: str, beta: float, gaps: dict[str, float]) -> str:
    sim = simulated(world, beta)
    worst = max(gaps, key=lambda k: np.nan_to_num(gaps[k], nan=np.inf))
    return (
        f"world {world}, β={beta:g}: worst {worst} off by {gaps[worst]:.1%}; "
        f"model asks {sim['ask'].round(2).to_dict()}, landed {sim['landed'].round(2).to_dict()}, "
        f"sold {sim['sold'].round(1).to_dict()}; max drift of landed prices between the last two "
        f"{LAST}-tick windows {sim['drift'].max():.1%}\nLP:\n{benchmark(world).table()}"
    )


# ------------------------------------------------------------------ the benchmark itself


def test_lp_matches_hand_computation_in_world_a() -> None:
    """The solver against the equilibrium worked out by hand from the scenario's numbers."""
    eq = benchmark("a")
    s = load_scenario(_path("a"))
    mines = {m.name: m for m in s.mines}
    plants = {p.name: p for p in s.processors}
    dom = s.transport.domestic.cost_usd_per_kg
    reg = s.transport.regional.cost_usd_per_kg
    far = s.transport.intercontinental.cost_usd_per_kg
    cn_sep = plants["cn_sep"]
    # all slack: CN mine → CN plant → every buyer; prices are costs plus transport
    fob = (cn_sep.processing_cost_usd_per_kg + mines["cn_mine"].cash_cost_usd_per_kg + dom) / 0.9
    assert eq.fob_usd_per_kg["cn_sep"] == pytest.approx(fob)
    assert eq.fob_usd_per_kg["cn_mine"] == pytest.approx(mines["cn_mine"].cash_cost_usd_per_kg)
    expected = {"cn_users": fob + dom, "jp_users": fob + reg, "us_users": fob + far}
    for buyer, price in expected.items():
        assert eq.landed_usd_per_kg[buyer] == pytest.approx(price)
    demand = sum(b.base_demand_t_per_yr for b in s.buyers) / 12
    assert eq.sold_t["cn_sep"] == pytest.approx(demand)
    assert eq.sold_t["cn_mine"] == pytest.approx(demand / 0.9)


def test_lp_rent_and_tariff_worlds() -> None:
    """(b): the CN plant binds and earns a rent; (c): the tariff moves the US buyers."""
    b, c, a = benchmark("b"), benchmark("c"), benchmark("a")
    assert b.output_t["cn_sep"] == pytest.approx(b.capacity_t["cn_sep"])
    assert b.rent_usd_per_kg["cn_sep"] > 1.0
    # the marginal supplier is the US plant at cost: its price sets the CN plant's
    assert b.rent_usd_per_kg["us_sep"] == pytest.approx(0.0, abs=1e-9)
    assert a.flow("cn_sep", "us_users") > 0 and a.flow("us_sep", "us_users") == 0
    assert c.flow("cn_sep", "us_users") == 0 and c.flow("us_sep", "us_users") > 0
    # the ad valorem condition on the link that is now just out of use
    lk = next(k for k in c.links if k.seller == "cn_sep" and k.buyer == "us_users")
    assert lk.ad_valorem == pytest.approx(0.25)
    assert (
        c.fob_usd_per_kg["cn_sep"] * 1.25 + lk.transport_usd_per_kg
        > (c.landed_usd_per_kg["us_users"])
    )


@pytest.mark.parametrize("world", WORLDS)
def test_lp_solution_is_unique(world: str) -> None:
    """Every unused link is clearly dearer than its buyer's price, so flows are unique."""
    assert benchmark(world).uniqueness_margin_usd_per_kg >= 1.0


# ------------------------------------------------------------------ the model against it


# Measured when this file was written (engine at commit f1c34c1; β = 200, 360 ticks, last 24
# ticks averaged). Only these cases are marked; every one of them fails at the time of writing.
@pytest.mark.parametrize("world", WORLDS)
def test_prices_converge_to_equilibrium(world: str) -> None:
    """Every traded price within PRICE_TOL of the LP's (buyers landed, sellers' asks)."""
    gaps = price_gaps(world, BETA_HIGH)
    worst = np.nanmax(np.where(np.isnan(list(gaps.values())), np.inf, list(gaps.values())))
    assert worst <= PRICE_TOL, _describe(world, BETA_HIGH, gaps)


@pytest.mark.parametrize("world", WORLDS)
def test_flows_converge_to_equilibrium(world: str) -> None:
    """Every seller's tonnes per tick within FLOW_TOL of total demand of the LP's."""
    gaps = flow_gaps(world, BETA_HIGH)
    assert max(gaps.values()) <= FLOW_TOL, _describe(world, BETA_HIGH, gaps)


@pytest.mark.parametrize("world", WORLDS)
def test_demand_is_met(world: str) -> None:
    """Whatever the prices, fixed demand is served in full in every world (both β)."""
    s = load_scenario(_path(world))
    for beta in (BETA_HIGH, BETA_DEFAULT):
        bought = simulated(world, beta)["bought"]
        for b in s.buyers:
            need = b.base_demand_t_per_yr / s.ticks_per_year
            assert bought.get(b.name, 0.0) == pytest.approx(need, rel=0.01), (world, beta, b.name)


def test_default_beta_deviation() -> None:
    """How far the default β (orders spread on purpose) is from the benchmark; printed.

    Not a pass/fail criterion of §11.2 (which asks for high β); it asserts only that every
    gap was measured (finite), and prints the table beside the high-β one.
    """
    rows = []
    for world in WORLDS:
        for beta in (BETA_HIGH, BETA_DEFAULT):
            p, q = price_gaps(world, beta), flow_gaps(world, beta)
            assert all(math.isfinite(v) for v in [*p.values(), *q.values()]), (world, beta)
            rows.append(
                {
                    "world": world,
                    "beta": beta,
                    "max price gap": f"{max(p.values()):.1%}",
                    "mean price gap": f"{np.mean(list(p.values())):.1%}",
                    "max flow gap (share of demand)": f"{max(q.values()):.1%}",
                    "drift (last 2 windows)": f"{simulated(world, beta)['drift'].max():.1%}",
                }
            )
    print("\nEquilibrium benchmark (MODEL.md §11.2): model vs LP\n")
    print(pd.DataFrame(rows).to_string(index=False))
