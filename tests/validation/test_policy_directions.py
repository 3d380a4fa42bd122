"""Policy directions (MODEL.md §11.4): each stated effect as paired runs over several seeds.

Each policy scenario runs against its counterfactual with the same seed. The pair shares its
warm-up and its random numbers (each kind of draw has its own stream, and a reserve takes no
price-noise draw), so up to the policy the two runs are identical and the difference is the
policy's effect. Runs last 120 ticks (2025–2034), long enough for separation plants' lead times.

The model's prices move in cycles (lumpy investment, inelastic demand), and a policy shifts
them, so a single month of a pair can differ either way by chance. Effects are therefore measured
over the policy's years (means of monthly metrics, or capacity averaged after the lead time),
asserted on the mean over seeds, and, where the model is robust, in every seed. Effect sizes are
printed (``pytest -s``) and quoted in ``docs/validation.md``.
"""

from __future__ import annotations

import numpy as np

from tests.validation.paired import SEEDS, metrics, paired

AFTER = slice(12, 120)  # the policy's years, past the first year of adjustment
BUILT = slice(36, 120)  # after separation plants' lead times (2–3 years)
FLOOR_LEVEL = 110.0
FLOOR = (
    f"policies.price_floors=[{{product: 'oxide:NdPr', level_usd_per_kg: {FLOOR_LEVEL}, "
    "mechanism: price_gap_subsidy}]",
)
NO_RESERVE = ("policies.reserve=null",)
RESERVE_SEEDS = tuple(range(8))
OUTAGE = slice(37, 46)  # strategic_reserve's 2028 outage (ticks 37–42) and the lead time after


def mean(frame, column, rows=AFTER):
    return float(frame[column].loc[rows].mean())


def non_cn_separation(frame, rows=BUILT):
    capacity = frame["capacity_separation_alliance"] + frame["capacity_separation_other"]
    return float(capacity.loc[rows].mean())


def report(name, values, unit=""):
    print(f"{name}: mean {np.mean(values):+.3g}{unit}, per seed {np.round(values, 3).tolist()}")


def test_tariff_raises_alliance_landed_price_and_lowers_cn_processing_dependency():
    price = paired(lambda p, b: mean(p, "price_alliance_landed_magnet")
                   / mean(b, "price_alliance_landed_magnet") - 1, "alliance_tariff")
    dependency = paired(lambda p, b: mean(p, "dependency_processed_cn_alliance")
                        - mean(b, "dependency_processed_cn_alliance"), "alliance_tariff")
    report("tariff: alliance landed magnet price 2026–34", 100 * price, " %")
    report("tariff: alliance CN-processing dependency 2026–34", 100 * dependency, " points")
    # the price effect rides on the cycle (a tariff can move a spike), so: on average and in
    # all but one seed; the dependency effect is robust, so: in every seed
    assert price.mean() > 0 and (price > 0).sum() >= len(SEEDS) - 1
    assert np.all(dependency < 0)


def test_price_gap_floor_builds_compliant_capacity_at_a_fiscal_cost_near_world_prices():
    capacity = paired(lambda p, b: non_cn_separation(p) - non_cn_separation(b),
                      "price_floor_subsidy")
    cost = paired(lambda p, b: float(p["floor_subsidy_usd_million"].sum()), "price_floor_subsidy")
    gap = paired(lambda p, b: mean(p, "price_alliance_landed_oxide_NdPr")
                 / mean(p, "price_world_oxide_NdPr") - 1, "price_floor_subsidy")
    report("price-gap floor: non-CN separation capacity 2028–34", capacity, " t/yr")
    report("price-gap floor: subsidy paid 2025–34", cost, " US$ M")
    report("price-gap floor: alliance landed NdPr over world price", 100 * gap, " %")
    assert np.all(capacity > 0)
    assert np.all(cost > 0)
    assert np.all(np.abs(gap) < 0.02)  # buyers pay the world price plus transport (~1 %)


def test_border_adjusted_floor_keeps_alliance_landed_price_at_least_the_floor():
    # from the month after the floor starts (2025-07): the first month mixes in stock in transit
    monthly_low = paired(
        lambda p, b: float(p["price_alliance_landed_oxide_NdPr"].loc[8:].min()),
        "price_floor_border",
    )
    premium = paired(lambda p, b: mean(p, "price_alliance_landed_oxide_NdPr", slice(8, 120))
                     / mean(b, "price_alliance_landed_oxide_NdPr", slice(8, 120)) - 1,
                     "price_floor_border")
    report("border floor: lowest monthly alliance landed NdPr", monthly_low, " $/kg")
    report("border floor: alliance landed NdPr over the baseline's", 100 * premium, " %")
    assert np.all(monthly_low >= FLOOR_LEVEL - 1e-6)
    assert premium.mean() > 0


def test_reserve_lowers_the_peak_price_and_the_shortage_of_a_disruption():
    def effect(column, how):
        return np.array([
            how(metrics("strategic_reserve", seed)[column].loc[OUTAGE])
            - how(metrics("strategic_reserve", seed, NO_RESERVE)[column].loc[OUTAGE])
            for seed in RESERVE_SEEDS
        ])

    peak = effect("price_alliance_landed_oxide_NdPr", np.max)
    shortage = effect("shortage_alliance_oxide_NdPr", np.mean)
    released = np.array([metrics("strategic_reserve", seed)["reserve_release_t"].sum()
                         for seed in RESERVE_SEEDS])
    report("reserve: peak alliance landed NdPr in the outage", peak, " $/kg")
    report("reserve: mean alliance NdPr shortage in the outage", 100 * shortage, " points")
    report("reserve: stock released", released, " t")
    # the pair is identical until the reserve releases; a seed whose prices never reach the
    # release trigger shows no effect, so the peak is lower or equal in every seed and lower
    # on average. The shortage's first month comes before releases can arrive (lead time)
    # and lower prices raise need, so the mean over the outage is asserted on average and in
    # most seeds.
    assert np.all(peak <= 1e-9) and peak.mean() < 0
    assert shortage.mean() < 0 and (shortage <= 1e-9).sum() >= 0.75 * len(RESERVE_SEEDS)


def test_strategic_pricing_keeps_non_cn_capacity_out_and_a_floor_keeps_it_in():
    out = paired(lambda p, b: non_cn_separation(p) - non_cn_separation(b),
                 "china_strategic_pricing")
    kept = paired(lambda p, b: non_cn_separation(p) - non_cn_separation(b),
                  "china_strategic_pricing", "china_strategic_pricing", FLOOR, ())
    spent = paired(lambda p, b: float(p["strategic_pricing_usd_million"].sum()),
                   "china_strategic_pricing")
    report("strategic pricing: non-CN separation capacity 2028–34", out, " t/yr")
    report("strategic pricing + floor vs strategic pricing alone", kept, " t/yr")
    report("strategic pricing: China's budget spent", spent, " US$ M")
    # keeping capacity out works through investment (lower expected prices abroad), which a
    # cycle can offset in one seed: on average and in all but one seed
    assert out.mean() < 0 and (out < 0).sum() >= len(SEEDS) - 1
    assert np.all(kept > 0)
    assert np.all(spent > 0)


def test_seeds_are_five_or_more():
    assert len(SEEDS) >= 5 and len(RESERVE_SEEDS) >= 5
