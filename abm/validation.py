"""Validation measures of MODEL.md §11.3–§11.4, defined once for the tests and the notebook.

- :func:`crisis_facts` — the 2010 crisis (scenario ``crisis_2010``): an export price index of
  China's oxides, its spike, the timing of its peak, the two-tier spread and the fall from the
  peak while quotas stand.
- :func:`policy_effects` — each policy direction of §11.4 as a paired comparison: a policy run
  and its counterfactual with the same seed, which share their warm-up and random numbers, so
  the difference is the policy's effect.

The equilibrium benchmark (§11.2) is not here: its linear program lives in
``tests/validation/equilibrium.py`` so that it shares no code with the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from abm.runs import run

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
OXIDES = ("NdPr", "DyTb", "other")
CRISIS_CUT = "2010-07"  # China's second-half 2010 quota cut
CRISIS_QUOTAS_END = "2014-12"  # quotas abolished from 2015-01
POLICY_TICKS = 120  # 2025-01 to 2034-12: long enough for separation plants' lead times
AFTER = slice(12, POLICY_TICKS)  # the policy's years, past the first year of adjustment
BUILT = slice(36, POLICY_TICKS)  # after separation plants' lead times (2–3 years)
OUTAGE = slice(37, 46)  # strategic_reserve's 2028 outage (ticks 37–42) and the lead time after
FLOOR_LEVEL_USD_PER_KG = 110.0  # the floor of the price_floor_* scenarios (DoD–MP 2025)
NDPR_FLOOR = (
    f"policies.price_floors=[{{product: 'oxide:NdPr', "
    f"level_usd_per_kg: {FLOOR_LEVEL_USD_PER_KG}, mechanism: price_gap_subsidy}}]",
)
NO_RESERVE = ("policies.reserve=null",)


# ------------------------------------------------------------------ the 2010 crisis


def crisis_indices(metrics: pd.DataFrame, flows: pd.DataFrame) -> pd.DataFrame:
    """China's oxide export (FOB) and domestic price indices of a crisis run, 2009 = 1.

    A Laspeyres index over the oxides, weighted by the value of the run's 2009 exports of each
    and normalised to the 2009 export price of each oxide (ticks 1–12). Months without trade of
    an oxide carry its last price forward.
    """
    exports = flows[(flows.seller_country == "CN") & (flows.buyer_country != "CN")]
    first_year = exports[exports.tick <= 12]
    value = {
        oxide: float(
            (
                first_year[first_year["product"] == f"oxide:{oxide}"].eval(
                    "flow_t * ask_usd_per_kg"
                )
            ).sum()
        )
        for oxide in OXIDES
    }
    total = sum(value.values())

    def index(kind: str) -> pd.Series:
        return sum(
            value[o]
            / total
            * metrics[f"price_{kind}_oxide_{o}"].ffill()
            / metrics[f"price_export_fob_oxide_{o}"].iloc[1:13].mean()
            for o in OXIDES
        )

    return pd.DataFrame(
        {"date": metrics["date"], "export": index("export_fob"), "domestic": index("cn_domestic")}
    )


def crisis_facts(seed: int, overrides: tuple[str, ...] = ()) -> dict[str, float]:
    """The stylised facts of MODEL.md §11.3 measured on one run of ``crisis_2010``.

    Returns ``spike`` (peak of the export index over its 2009 mean), ``months_to_peak`` (after
    the 2010-07 cut), ``two_tier_share`` (share of quota months with export above domestic),
    ``fall`` (drop from the peak to the lowest point within 36 months while quotas stand) and
    non-Chinese separation capacity at the start and the end (t REO/yr).
    """
    metrics, indices = crisis_run(seed, overrides)
    export, domestic = indices["export"], indices["domestic"]
    cut = int(metrics.index[metrics["date"] == CRISIS_CUT][0])
    end = int(metrics.index[metrics["date"] == CRISIS_QUOTAS_END][0])
    peak_tick = int(export.loc[cut:end].idxmax())
    peak = float(export[peak_tick])
    non_cn = metrics["capacity_separation_alliance"] + metrics["capacity_separation_other"]
    return {
        "spike": peak / float(export.iloc[1:13].mean()),
        "months_to_peak": peak_tick - cut,
        "two_tier_share": float((export > domestic).loc[cut:end].mean()),
        "fall": 1 - float(export.loc[peak_tick : min(peak_tick + 36, end)].min()) / peak,
        "non_cn_separation_start_t_per_yr": float(non_cn.iloc[0]),
        "non_cn_separation_end_t_per_yr": float(non_cn.iloc[-1]),
    }


@cache
def crisis_run(seed: int, overrides: tuple[str, ...] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics and price indices of one ``crisis_2010`` run (cached)."""
    result = run(CONFIGS / "crisis_2010.yaml", seed=seed, overrides=list(overrides),
                 keep_model=False)  # fmt: skip
    return result.metrics, crisis_indices(result.metrics, result.flows)


def crisis_table(seeds: Iterable[int]) -> pd.DataFrame:
    """:func:`crisis_facts` for several seeds, one row each."""
    seeds = list(seeds)
    return pd.DataFrame([crisis_facts(s) for s in seeds], index=pd.Index(seeds, name="seed"))


# ------------------------------------------------------------------ policy directions


@cache
def policy_run(scenario: str, seed: int, overrides: tuple[str, ...] = ()) -> pd.DataFrame:
    """Metrics of one run of a shipped scenario for :data:`POLICY_TICKS` ticks (cached)."""
    path = CONFIGS / f"{scenario}.yaml"
    return run(path, seed=seed, ticks=POLICY_TICKS, overrides=list(overrides),
               keep_model=False).metrics  # fmt: skip


def _mean(frame: pd.DataFrame, column: str, rows: slice = AFTER) -> float:
    return float(frame[column].loc[rows].mean())


def _non_cn_separation(frame: pd.DataFrame, rows: slice = BUILT) -> float:
    capacity = frame["capacity_separation_alliance"] + frame["capacity_separation_other"]
    return float(capacity.loc[rows].mean())


@dataclass(frozen=True)
class Effect:
    """One measured effect of a policy: ``measure(policy_run, counterfactual_run)``."""

    name: str
    unit: str
    policy: str  # scenario of the policy run
    measure: Callable[[pd.DataFrame, pd.DataFrame], float]
    base: str = "baseline"  # scenario of the counterfactual
    policy_overrides: tuple[str, ...] = ()
    base_overrides: tuple[str, ...] = ()


EFFECTS = (
    Effect("tariff: alliance landed magnet price, 2026–34", "%", "alliance_tariff",
           lambda p, b: 100 * (_mean(p, "price_alliance_landed_magnet")
                               / _mean(b, "price_alliance_landed_magnet") - 1)),
    Effect("tariff: alliance CN-processing dependency, 2026–34", "points", "alliance_tariff",
           lambda p, b: 100 * (_mean(p, "dependency_processed_cn_alliance")
                               - _mean(b, "dependency_processed_cn_alliance"))),
    Effect("price-gap floor: non-CN separation capacity, 2028–34", "t/yr",
           "price_floor_subsidy", lambda p, b: _non_cn_separation(p) - _non_cn_separation(b)),
    Effect("price-gap floor: subsidy paid, 2025–34", "US$ M", "price_floor_subsidy",
           lambda p, b: float(p["floor_subsidy_usd_million"].sum())),
    Effect("price-gap floor: alliance landed NdPr over the world price", "%",
           "price_floor_subsidy",
           lambda p, b: 100 * (_mean(p, "price_alliance_landed_oxide_NdPr")
                               / _mean(p, "price_world_oxide_NdPr") - 1)),
    Effect("border floor: lowest monthly alliance landed NdPr", "US$/kg", "price_floor_border",
           lambda p, b: float(p["price_alliance_landed_oxide_NdPr"].loc[8:].min())),
    Effect("border floor: alliance landed NdPr over the baseline's", "%", "price_floor_border",
           lambda p, b: 100 * (_mean(p, "price_alliance_landed_oxide_NdPr", slice(8, None))
                               / _mean(b, "price_alliance_landed_oxide_NdPr", slice(8, None))
                               - 1)),
    Effect("reserve: peak alliance landed NdPr in the outage", "US$/kg", "strategic_reserve",
           lambda p, b: float(p["price_alliance_landed_oxide_NdPr"].loc[OUTAGE].max()
                              - b["price_alliance_landed_oxide_NdPr"].loc[OUTAGE].max()),
           base="strategic_reserve", base_overrides=NO_RESERVE),
    Effect("reserve: mean alliance NdPr shortage in the outage", "points", "strategic_reserve",
           lambda p, b: 100 * float(p["shortage_alliance_oxide_NdPr"].loc[OUTAGE].mean()
                                    - b["shortage_alliance_oxide_NdPr"].loc[OUTAGE].mean()),
           base="strategic_reserve", base_overrides=NO_RESERVE),
    Effect("reserve: stock released", "t", "strategic_reserve",
           lambda p, b: float(p["reserve_release_t"].sum()),
           base="strategic_reserve", base_overrides=NO_RESERVE),
    Effect("strategic pricing: non-CN separation capacity, 2028–34", "t/yr",
           "china_strategic_pricing",
           lambda p, b: _non_cn_separation(p) - _non_cn_separation(b)),
    Effect("strategic pricing + floor: non-CN separation capacity, 2028–34", "t/yr",
           "china_strategic_pricing",
           lambda p, b: _non_cn_separation(p) - _non_cn_separation(b),
           base="china_strategic_pricing", policy_overrides=NDPR_FLOOR),
    Effect("strategic pricing: China's budget spent", "US$ M", "china_strategic_pricing",
           lambda p, b: float(p["strategic_pricing_usd_million"].sum())),
)  # fmt: skip


def policy_effects(seeds: Iterable[int], effects: Iterable[Effect] = EFFECTS) -> pd.DataFrame:
    """Each effect in each seed: a table with columns ``effect``, ``unit``, ``seed``, ``value``."""
    rows = [
        {
            "effect": e.name,
            "unit": e.unit,
            "seed": seed,
            "value": e.measure(
                policy_run(e.policy, seed, e.policy_overrides),
                policy_run(e.base, seed, e.base_overrides),
            ),
        }
        for e in effects
        for seed in seeds
    ]
    return pd.DataFrame(rows)


def effect_values(table: pd.DataFrame, prefix: str) -> np.ndarray:
    """The values over seeds of the effect whose name starts with ``prefix``."""
    names = [n for n in table["effect"].unique() if n.startswith(prefix)]
    if len(names) != 1:
        raise KeyError(f"{prefix!r} matches {len(names)} effects")
    return table.loc[table["effect"] == names[0], "value"].to_numpy()
