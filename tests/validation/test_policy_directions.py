"""Policy directions (MODEL.md §11.4): each stated effect as paired runs over six seeds.

Each policy scenario runs against its counterfactual with the same seed (see
:mod:`abm.validation`). The pair shares its warm-up and its random numbers — each kind of draw
has its own stream, and a reserve takes no price-noise draw — so up to the policy the two runs
are identical and their difference is the policy's effect.

The model's prices move in cycles (lumpy investment, inelastic demand) and a policy shifts
them, so one month of a pair can differ either way by chance. Effects are therefore measured
over the policy's years (means of monthly metrics, capacity averaged after the lead time) and
asserted on the mean over seeds and, where the model is robust, in every seed; where a cycle can
offset the effect in one seed, in all but one. Effect sizes are printed (``pytest -s``) and
quoted in docs/validation.md.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd

from abm.validation import FLOOR_LEVEL_USD_PER_KG, effect_values, policy_effects

SEEDS = (0, 1, 2, 3, 4, 5)


@cache
def effects() -> pd.DataFrame:
    table = policy_effects(SEEDS)
    summary = table.pivot_table(index=["effect", "unit"], columns="seed", values="value")
    summary.insert(0, "mean", summary.mean(axis=1))
    print("\n" + summary.round(2).to_string())
    return table


def values(prefix: str) -> np.ndarray:
    return effect_values(effects(), prefix)


def test_tariff_raises_alliance_landed_price_and_lowers_cn_processing_dependency():
    price = values("tariff: alliance landed magnet price")
    dependency = values("tariff: alliance CN-processing dependency")
    # the price effect rides on the cycle (a tariff can move a spike): on average and in all
    # but one seed; the dependency effect is robust: in every seed
    assert price.mean() > 0 and (price > 0).sum() >= len(SEEDS) - 1
    assert np.all(dependency < 0)


def test_price_gap_floor_builds_compliant_capacity_at_a_fiscal_cost_near_world_prices():
    assert np.all(values("price-gap floor: non-CN separation capacity") > 0)
    assert np.all(values("price-gap floor: subsidy paid") > 0)
    # buyers pay the world price plus transport (~0.5 %): within 2 %
    assert np.all(np.abs(values("price-gap floor: alliance landed NdPr over the world")) < 2.0)


def test_border_adjusted_floor_keeps_alliance_landed_price_at_least_the_floor():
    # every month from the one after the floor starts (its first month mixes in stock bought
    # before it)
    assert np.all(values("border floor: lowest monthly") >= FLOOR_LEVEL_USD_PER_KG - 1e-6)
    assert values("border floor: alliance landed NdPr over the baseline").mean() > 0


def test_reserve_lowers_the_peak_price_and_the_shortage_of_a_disruption():
    peak = values("reserve: peak alliance landed NdPr")
    shortage = values("reserve: mean alliance NdPr shortage")
    # the pair is identical until the reserve releases, and a seed whose prices never reach
    # the release trigger shows no effect: the peak is lower or equal in every seed and lower
    # on average. The shortage's first month comes before releases can arrive (lead time) and
    # lower prices raise need, so its mean over the outage is asserted on average and in at
    # least three seeds in four.
    assert np.all(peak <= 1e-9) and peak.mean() < 0
    assert shortage.mean() < 0 and (shortage <= 1e-9).sum() >= 0.75 * len(SEEDS)
    assert np.all(values("reserve: stock released") >= 0)


def test_strategic_pricing_keeps_non_cn_capacity_out_and_a_floor_keeps_it_in():
    out = values("strategic pricing: non-CN separation capacity")
    kept = values("strategic pricing + floor: non-CN separation capacity")
    # keeping capacity out works through investment (lower expected prices abroad), which a
    # cycle can offset in one seed: on average and in all but one seed
    assert out.mean() < 0 and (out < 0).sum() >= len(SEEDS) - 1
    assert np.all(kept > 0)
    assert np.all(values("strategic pricing: China's budget spent") > 0)


def test_seeds_are_five_or_more():
    assert len(SEEDS) >= 5
