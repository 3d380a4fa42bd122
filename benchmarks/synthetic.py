"""Synthetic firm-level worlds of any size, for the scaling benchmarks (issue #4).

A world of ``n_buyers`` end users has ``n_buyers / 10`` processing plants (half separation, half
magnet making) and ``n_buyers / 20`` mines, and each buying stock — an end user or a plant's
input — is linked to ``suppliers_per_buyer`` sellers of its product drawn at random
(``network.suppliers_per_buyer``, MODEL.md §5). Capacities are drawn so the world is near
balance at the initial prices, so clearing meets the ordinary mix of slack and binding sellers
rather than an empty or a starved market.

The world is not calibrated: every number below is an assumption chosen for a plausible
structure (costs and prices of the order of ``configs/baseline.yaml``). Draws come from a
generator seeded by ``seed``; the same arguments give the same scenario.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from abm.scenario import Scenario, build_scenario

# the baseline's countries and transport regions; a world uses the first ``n_countries``
COUNTRIES = {
    "CN": "asia",
    "US": "americas",
    "EU": "europe",
    "JP": "asia",
    "AU": "oceania",
    "MY": "asia",
    "MM": "asia",
    "TH": "asia",
    "NG": "africa",
    "IN": "asia",
    "RU": "europe",
    "VN": "asia",
    "BR": "americas",
    "KR": "asia",
    "CA": "americas",
    "GB": "europe",
    "ROW": "asia",
}
ALLIANCE = ("US", "EU", "JP")
PRICES_USD_PER_KG = {
    "concentrate": 5.4,
    "oxide:NdPr": 60.0,
    "oxide:DyTb": 250.0,
    "oxide:other": 2.0,
    "magnet": 50.0,
}
RECIPE_T_PER_T = {"NdPr": 0.25, "DyTb": 0.01}
MAGNET_BUYER_SHARE = 0.8  # the rest buy oxides
NDPR_PER_T_INPUT = 0.2 * 0.95  # typical ore NdPr share × recovery, t oxide per t REO
HEADROOM = 1.2  # capacity over the demand it serves


def _composition(rng: np.random.Generator) -> dict[str, float]:
    ndpr = round(float(rng.uniform(0.15, 0.25)), 4)
    dytb = round(float(rng.uniform(0.005, 0.04)), 4)
    return {"NdPr": ndpr, "DyTb": dytb, "other": round(1.0 - ndpr - dytb, 4)}


def _split(total: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """``total`` split over ``n`` firms with log-normal sizes."""
    size = rng.lognormal(0.0, 0.5, n)
    return total * size / size.sum()


def synthetic_scenario_data(
    n_buyers: int,
    suppliers_per_buyer: int = 20,
    n_countries: int = 6,
    warmup_ticks: int = 6,
    seed: int = 0,
) -> dict[str, Any]:
    """Raw scenario mapping of a synthetic world (see the module docstring).

    Args:
        n_buyers: end users (>= 20, so there is at least one mine).
        suppliers_per_buyer: sellers each buying stock is linked to.
        n_countries: countries used (2–17); provenance width grows with its square.
        warmup_ticks: ticks run before the start.
        seed: seed of the generator that draws sizes, costs and countries.

    Returns:
        A mapping :func:`abm.scenario.build_scenario` validates.

    """
    if n_buyers < 20:
        raise ValueError(f"n_buyers = {n_buyers}: needs at least 20 (one mine per 20 buyers)")
    if not 2 <= n_countries <= len(COUNTRIES):
        raise ValueError(f"n_countries = {n_countries}: must lie in [2, {len(COUNTRIES)}]")
    rng = np.random.default_rng(seed)
    countries = list(COUNTRIES)[:n_countries]
    n_mines, n_plants = n_buyers // 20, max(n_buyers // 10, 2)
    n_separation = n_plants // 2
    n_magnet = n_plants - n_separation

    def country(n: int) -> list[str]:
        return [str(c) for c in rng.choice(countries, n)]

    magnet_buyer = rng.random(n_buyers) < MAGNET_BUYER_SHARE
    oxide = rng.choice(["oxide:NdPr", "oxide:DyTb", "oxide:other"], n_buyers, p=[0.3, 0.1, 0.6])
    product = np.where(magnet_buyer, "magnet", oxide)
    demand = rng.lognormal(np.log(100.0), 0.8, n_buyers)  # t/yr
    magnet_demand = demand[magnet_buyer].sum()
    ndpr_demand = demand[product == "oxide:NdPr"].sum()
    separation_input = HEADROOM * (
        (RECIPE_T_PER_T["NdPr"] * HEADROOM * magnet_demand + ndpr_demand) / NDPR_PER_T_INPUT
    )
    buyers = [
        {
            "name": f"buyer{i}",
            "country": c,
            "product": str(product[i]),
            "base_demand_t_per_yr": round(float(demand[i]), 3),
            "reference_price_usd_per_kg": PRICES_USD_PER_KG[str(product[i])],
            "reservation_price_usd_per_kg": 6 * PRICES_USD_PER_KG[str(product[i])],
            "growth_rate_per_yr": round(float(rng.uniform(0.0, 0.06)), 4),
            "elasticity": round(float(rng.uniform(0.1, 0.5)), 3),
        }
        for i, c in enumerate(country(n_buyers))
    ]
    mines = [
        {
            "name": f"mine{i}",
            "country": c,
            "capacity_t_per_yr": round(float(cap), 3),
            "cash_cost_usd_per_kg": round(float(rng.uniform(2.0, 4.5)), 3),
            "composition": _composition(rng),
        }
        for i, (c, cap) in enumerate(
            zip(country(n_mines), _split(1.05 * separation_input, n_mines, rng), strict=True)
        )
    ]
    separation = [
        {
            "name": f"separation{i}",
            "country": c,
            "stage": "separation",
            "capacity_t_per_yr": round(float(cap), 3),
            "processing_cost_usd_per_kg": round(float(rng.uniform(1.0, 3.0)), 3),
            "recovery": {"NdPr": 0.95, "DyTb": 0.9, "other": 0.9},
        }
        for i, (c, cap) in enumerate(
            zip(country(n_separation), _split(separation_input, n_separation, rng), strict=True)
        )
    ]
    magnet = [
        {
            "name": f"magnet{i}",
            "country": c,
            "stage": "magnet",
            "capacity_t_per_yr": round(float(cap), 3),
            "processing_cost_usd_per_kg": round(float(rng.uniform(18.0, 28.0)), 3),
        }
        for i, (c, cap) in enumerate(
            zip(country(n_magnet), _split(HEADROOM * magnet_demand, n_magnet, rng), strict=True)
        )
    ]
    projects = [
        {
            "name": f"project{i}",
            "country": c,
            "stage": "separation",
            "capacity_t_per_yr": round(float(separation_input / n_separation), 3),
            "unit_cost_usd_per_kg": 2.5,
            "capex_usd_million": round(float(separation_input / n_separation * 0.02), 3),
            "earliest_start": "2025-06",
            "lead_time_years": 2,
            "recovery": {"NdPr": 0.95, "DyTb": 0.9, "other": 0.9},
        }
        for i, c in enumerate(country(max(n_buyers // 1000, 1)))
    ]
    return {
        "name": f"synthetic_{n_buyers}",
        "description": "Synthetic firm-level world for the scaling benchmarks (not calibrated).",
        "start": "2025-01",
        "ticks": 240,
        "alliance": [c for c in ALLIANCE if c in countries],
        "elements": ["NdPr", "DyTb", "other"],
        "countries": {c: {"region": COUNTRIES[c]} for c in countries},
        "magnet": {"recipe_t_per_t": RECIPE_T_PER_T},
        "initial_prices_usd_per_kg": PRICES_USD_PER_KG,
        "market": {"warmup_ticks": warmup_ticks},
        "network": {"suppliers_per_buyer": suppliers_per_buyer},
        "mines": mines,
        "processors": separation + magnet,
        "buyers": buyers,
        "projects": projects,
    }


def synthetic_scenario(
    n_buyers: int,
    suppliers_per_buyer: int = 20,
    n_countries: int = 6,
    warmup_ticks: int = 6,
    seed: int = 0,
) -> Scenario:
    """A validated synthetic scenario (arguments as :func:`synthetic_scenario_data`)."""
    data = synthetic_scenario_data(n_buyers, suppliers_per_buyer, n_countries, warmup_ticks, seed)
    return build_scenario(data, f"synthetic world of {n_buyers} buyers")
