"""The 2010 crisis (MODEL.md §11.3): crisis_2010 from China's quota cut alone, over five seeds.

The export price is a Laspeyres index of China's oxide export FOB prices, weighted by the value
of 2009 exports in the run and normalised to 2009 = 1 (the history: a broad REO export index
+1,100 %, Dy oxide $91/kg Jan 2009 → $2,377/kg Aug 2011). Each figure is printed per seed
(``pytest -s``) and asserted against the stylised facts.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd
import pytest

from abm import run
from tests.worlds import CONFIGS

SEEDS = (0, 1, 2, 3, 4)
OXIDES = ("NdPr", "DyTb", "other")
CUT, QUOTAS_END = "2010-07", "2014-12"


@cache
def crisis(seed: int) -> dict[str, float]:
    result = run(CONFIGS / "crisis_2010.yaml", seed=seed, keep_model=False)
    m, f = result.metrics, result.flows
    exports = f[(f.seller_country == "CN") & (f.buyer_country != "CN") & (f.tick <= 12)]
    weights = {p: float((exports[exports["product"] == f"oxide:{p}"].eval(
        "flow_t * ask_usd_per_kg")).sum()) for p in OXIDES}
    total = sum(weights.values())

    def index(kind: str) -> pd.Series:
        return sum(weights[p] / total * m[f"price_{kind}_oxide_{p}"].ffill()
                   / m[f"price_export_fob_oxide_{p}"].iloc[1:13].mean() for p in OXIDES)

    export, domestic = index("export_fob"), index("cn_domestic")
    cut = int(m.index[m["date"] == CUT][0])
    end = int(m.index[m["date"] == QUOTAS_END][0])
    peak_tick = int(export.loc[cut:end].idxmax())
    peak = float(export[peak_tick])
    return {
        "spike": peak / float(export.iloc[1:13].mean()),
        "months_to_peak": peak_tick - cut,
        "two_tier_share": float((export > domestic).loc[cut:end].mean()),
        "fall": 1 - float(export.loc[peak_tick:min(peak_tick + 36, end)].min()) / peak,
        "non_cn_separation_2015": float(m["capacity_separation_alliance"].iloc[-1]
                                        + m["capacity_separation_other"].iloc[-1]),
        "non_cn_separation_2009": float(m["capacity_separation_alliance"].iloc[0]
                                        + m["capacity_separation_other"].iloc[0]),
    }


def table() -> pd.DataFrame:
    frame = pd.DataFrame([crisis(seed) for seed in SEEDS], index=pd.Index(SEEDS, name="seed"))
    print("\n" + frame.round(2).to_string())
    return frame


def test_multi_fold_export_price_spike_in_every_seed():
    assert (table()["spike"] >= 3).all()  # "multi-fold"; history ≈ 12x for the broad index


def test_peak_comes_6_to_24_months_after_the_cut():
    months = table()["months_to_peak"]
    assert 6 <= np.median(months) <= 24  # history: about 13 months (2010-07 → 2011-08)


def test_two_tier_prices_during_the_quota_years():
    assert (table()["two_tier_share"] >= 0.9).all()  # export above domestic in 90 % of months


def test_new_non_cn_separation_comes_online():
    frame = table()
    assert (frame["non_cn_separation_2015"] > frame["non_cn_separation_2009"]).all()


@pytest.mark.xfail(strict=True, reason=(
    "measured over seeds 0–4: the fall within three years of the peak while quotas stand is "
    "72 %, 72 %, 2 %, 4 %, 10 % (history: > 80 %). The quota keeps binding to 2014 in most "
    "seeds: demand destruction (substitution at most 10 %/yr) is too weak to leave the quota "
    "slack as it did in 2012–14, when exports (≈16 kt) fell far below the quota (≈31 kt)."))
def test_price_falls_by_more_than_half_within_three_years_while_quotas_stand():
    assert np.median(table()["fall"]) > 0.5
