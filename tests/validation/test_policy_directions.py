"""Policy directions (MODEL.md §11.4): each stated effect as paired runs over five seeds.

Each policy scenario runs against its counterfactual with the same seed (the same warm-up, so
the pair shares its history up to the policy), for 120 ticks (2025–2034). Effect sizes are
printed (``pytest -s``). A direction is asserted on the mean over seeds, and where the model is
robust, in every seed; a stated effect the model does not reproduce is a strict xfail with the
measured numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.validation.paired import SEEDS, paired

AFTER = slice(12, 120)  # the policy's years, past the first year of adjustment
DISRUPTION = slice(36, 60)  # strategic_reserve's 2028 outage and the two years after it
NO_RESERVE = ("policies.reserve=null",)
FLOOR = (
    "policies.price_floors=[{product: 'oxide:NdPr', level_usd_per_kg: 110, "
    "mechanism: price_gap_subsidy}]",
)


def mean(frame, column, rows=AFTER):
    return float(frame[column].loc[rows].mean())


def non_cn_separation(frame):
    return float(frame["capacity_separation_alliance"].iloc[-1]
                 + frame["capacity_separation_other"].iloc[-1])


def report(name, values, unit=""):
    print(f"{name}: mean {np.mean(values):+.3g}{unit}, per seed {np.round(values, 3).tolist()}")


def test_tariff_raises_alliance_landed_price_and_lowers_cn_processing_dependency():
    price = paired(lambda p, b: mean(p, "price_alliance_landed_magnet")
                   / mean(b, "price_alliance_landed_magnet") - 1, "alliance_tariff")
    dependency = paired(lambda p, b: mean(p, "dependency_processed_cn_alliance")
                        - mean(b, "dependency_processed_cn_alliance"), "alliance_tariff")
    report("tariff: alliance landed magnet price", 100 * price, " %")
    report("tariff: alliance CN-processing dependency", 100 * dependency, " points")
    assert price.mean() > 0 and (price > 0).sum() >= 4
    assert np.all(dependency < 0)


def test_price_gap_floor_builds_compliant_capacity_at_a_fiscal_cost_near_world_prices():
    capacity = paired(lambda p, b: non_cn_separation(p) - non_cn_separation(b),
                      "price_floor_subsidy")
    cost = paired(lambda p, b: float(p["floor_subsidy_usd_million"].sum()), "price_floor_subsidy")
    gap = paired(lambda p, b: mean(p, "price_alliance_landed_oxide_NdPr")
                 / mean(p, "price_world_oxide_NdPr") - 1, "price_floor_subsidy")
    report("price-gap floor: non-CN separation capacity in 2034", capacity, " t/yr")
    report("price-gap floor: subsidy paid 2025–34", cost, " US$ M")
    report("price-gap floor: alliance landed NdPr over world price", 100 * gap, " %")
    assert capacity.mean() > 0 and (capacity > 0).sum() >= 4
    assert np.all(cost > 0)
    assert np.all(np.abs(gap) < 0.02)  # buyers pay the world price plus transport (~1 %)


@pytest.mark.xfail(strict=True, reason=(
    "measured: mean alliance landed NdPr 84–96 $/kg against F = 110 over 2026–34 (5 seeds). "
    "Every non-compliant import lands at >= F (tests/test_policy.py checks it edge by edge), "
    "but compliant sellers are exempt and charge one world price to all buyers, so the average "
    "stays below F; a seller-side price discrimination rule would be needed."))
def test_border_adjusted_floor_keeps_alliance_landed_price_at_least_the_floor():
    landed = paired(lambda p, b: mean(p, "price_alliance_landed_oxide_NdPr", slice(8, 120)),
                    "price_floor_border")
    report("border floor: mean alliance landed NdPr", landed, " $/kg")
    assert np.all(landed >= 110 * 0.98)


@pytest.mark.xfail(strict=True, reason=(
    "measured: with a US NdPr-oxide reserve the 2028 peak alliance landed NdPr changes by "
    "-18 % to +61 % across seeds, and a magnet reserve for the alliance never fills (compliant "
    "magnets are scarce at its buy trigger). The US consumes magnets, so oxide releases reach "
    "only US oxide buyers (one small magnet plant)."))
def test_reserve_lowers_the_peak_price_and_shortage_of_a_disruption():
    peak = paired(lambda p, b: p["price_alliance_landed_oxide_NdPr"].loc[DISRUPTION].max()
                  / b["price_alliance_landed_oxide_NdPr"].loc[DISRUPTION].max() - 1,
                  "strategic_reserve", "strategic_reserve", (), NO_RESERVE)
    shortage = paired(lambda p, b: p["shortage_alliance"].loc[DISRUPTION].max()
                      - b["shortage_alliance"].loc[DISRUPTION].max(),
                      "strategic_reserve", "strategic_reserve", (), NO_RESERVE)
    report("reserve: peak alliance landed NdPr in the disruption", 100 * peak, " %")
    report("reserve: peak alliance shortage in the disruption", 100 * shortage, " points")
    assert peak.mean() < 0 and shortage.mean() < 0


def test_strategic_pricing_drives_non_cn_capacity_out_and_a_floor_keeps_it_in():
    out = paired(lambda p, b: non_cn_separation(p) - non_cn_separation(b),
                 "china_strategic_pricing")
    kept = paired(lambda p, b: non_cn_separation(p) - non_cn_separation(b),
                  "china_strategic_pricing", "china_strategic_pricing", FLOOR, ())
    spent = paired(lambda p, b: float(p["strategic_pricing_usd_million"].sum()),
                   "china_strategic_pricing")
    report("strategic pricing: non-CN separation capacity in 2034", out, " t/yr")
    report("strategic pricing + floor vs strategic pricing alone", kept, " t/yr")
    report("strategic pricing: China's budget spent", spent, " US$ M")
    assert out.mean() < 0 and np.all(out <= 0)
    assert kept.mean() > 0


def test_seeds_are_five():
    assert len(SEEDS) >= 5
