"""Flat levers (abm.levers): what each changes, where, and keyword construction of the model."""

import mesa
import numpy as np
import pandas as pd
import pytest

from abm import RareEarthModel
from abm.levers import LEVERS, levers_table, resolve
from abm.scenario import ScenarioError, load_scenario
from tests.worlds import CONFIGS

SMALL = CONFIGS / "tests" / "small.yaml"
QUICK = {"market.warmup_ticks": 4}


def event_settings(scenario, key):
    return [(e.at, e.set[key]) for e in scenario.events if key in e.set]


def test_every_lever_is_documented_with_a_unit():
    rows = levers_table()
    assert [r["name"] for r in rows] == list(LEVERS)
    for row in rows:
        assert row["doc"] and row["unit"] and row["changes"]
        assert row["kind"] in ("float", "choice", "countries")
        assert row["kind"] != "choice" or row["choices"]


def test_none_leaves_the_scenario_as_it_says():
    levers = dict.fromkeys(LEVERS)
    assert resolve(CONFIGS / "full_alliance.yaml", **levers) == load_scenario(
        CONFIGS / "full_alliance.yaml"
    )


def test_tariff_is_added_from_the_start_when_the_scenario_has_none():
    s = resolve(SMALL, tariff_rate=0.3)
    assert {(t.origin, t.destination, t.rate) for t in s.policies.tariffs} == {
        ("china", "alliance", 0.3)
    }
    assert {t.product for t in s.policies.tariffs} == set(s.products[1:])
    assert resolve(SMALL, tariff_rate=0.0).policies.tariffs == []


def test_tariff_keeps_the_date_of_a_dated_tariff():
    s = resolve(CONFIGS / "alliance_tariff.yaml", tariff_rate=0.1)
    assert s.policies.tariffs == []  # still not in force before the event
    ((at, rules),) = event_settings(s, "policies.tariffs")
    assert at == "2026-01" and {r["rate"] for r in rules} == {0.1} and len(rules) == 3


def test_floor_level_zero_removes_every_floor_and_a_level_rewrites_them():
    path = CONFIGS / "price_floor_subsidy.yaml"
    assert event_settings(resolve(path, floor_level_usd_per_kg=0), "policies.price_floors") == [
        ("2025-07", [])
    ]
    ((_, floors),) = event_settings(
        resolve(path, floor_level_usd_per_kg=95, floor_mechanism="border_adjusted"),
        "policies.price_floors",
    )
    assert floors[0]["level_usd_per_kg"] == 95 and floors[0]["mechanism"] == "border_adjusted"
    assert floors[0]["upside_share"] == 0.30  # what the lever does not name stays


def test_floor_is_added_on_the_first_elements_oxide():
    (floor,) = resolve(SMALL, floor_level_usd_per_kg=80).policies.price_floors
    assert (floor.product, floor.level_usd_per_kg, floor.mechanism) == (
        "oxide:NdPr",
        80,
        "price_gap_subsidy",
    )


def test_floor_mechanism_without_a_floor_is_a_one_line_error():
    with pytest.raises(ScenarioError, match=r"floor_mechanism = 'offtake': .*no price floor"):
        resolve(SMALL, floor_mechanism="offtake")


def test_reserve_budget_keeps_the_loan_private_split():
    path = CONFIGS / "strategic_reserve.yaml"
    before = load_scenario(path).policies.reserve
    after = resolve(path, reserve_budget_usd_million=5000, reserve_target_months=3).policies.reserve
    assert after.loan_usd_million + after.private_usd_million == pytest.approx(5000)
    assert after.loan_usd_million / 5000 == pytest.approx(
        before.loan_usd_million / (before.loan_usd_million + before.private_usd_million)
    )
    assert after.target_months == 3
    with pytest.raises(ScenarioError, match=r"reserve_target_months = 3: .*no strategic reserve"):
        resolve(SMALL, reserve_target_months=3)


def test_export_quota_rewrites_dated_quotas_and_keeps_removals_and_bans():
    s = resolve(CONFIGS / "crisis_2010.yaml", export_quota_t_per_yr=20000)
    quotas = event_settings(s, "policies.export_controls.0.quota_t_per_yr")
    assert {q for _, q in quotas} == {20000, None}  # abolition (null) in 2015 stays
    base = resolve(CONFIGS / "baseline.yaml", export_quota_t_per_yr=20000).policies
    assert [(c.product, c.quota_t_per_yr) for c in base.export_controls] == [
        ("concentrate", 0.0),  # the ore export ban keeps precedence
        ("any", 20000),
    ]


def test_membership_and_rules_of_origin_hold_for_the_whole_run():
    s = resolve(CONFIGS / "full_alliance.yaml", alliance_members="US, EU", min_compliant_share=0.3)
    assert s.alliance == ["US", "EU"]
    assert event_settings(s, "alliance") == [("2026-02", ["US", "EU"])]
    assert [v for _, v in event_settings(s, "policies.compliance.min_compliant_share")] == [
        0.3,
        0.3,
    ]
    # the 2026 event replaces the whole compliance section, so the share is written there too
    ((_, section),) = event_settings(s, "policies.compliance")
    assert section == {"ban_allied_mines_to_china": True, "min_compliant_share": 0.3}


def test_scales_multiply_every_entry():
    base = load_scenario(CONFIGS / "baseline.yaml")
    s = resolve(CONFIGS / "baseline.yaml", elasticity_scale=2, lead_time_scale=0.5)
    assert [b.elasticity for b in s.buyers] == pytest.approx(
        [2 * b.elasticity for b in base.buyers]
    )
    assert [p.lead_time_years for p in s.projects] == pytest.approx(
        [0.5 * p.lead_time_years for p in base.projects]
    )
    assert s.investment.expansion_lead_time_years == 0.5 * base.investment.expansion_lead_time_years


def test_a_lever_value_the_schema_refuses_names_the_key():
    with pytest.raises(ScenarioError, match=r"market\.logit_beta = -1"):
        resolve(SMALL, logit_beta=-1)
    with pytest.raises(ScenarioError, match=r"policies\.china_pricing\.mode = 'dumping'"):
        resolve(SMALL, china_pricing_mode="dumping")


def test_model_takes_levers_and_rejects_unknown_keywords():
    model = RareEarthModel(scenario=SMALL, rng=1, overrides=QUICK, tariff_rate=0.25)
    assert {t.rate for t in model.config.policies.tariffs} == {0.25}
    with pytest.raises(TypeError, match="tarif_rate"):
        RareEarthModel(scenario=SMALL, tarif_rate=0.25)


def test_model_defaults_to_the_baseline():
    assert RareEarthModel(rng=0).config.name == "baseline"


def test_mesa_batch_run_drives_the_model_with_levers():
    ticks = 6
    results = mesa.batch_run(
        RareEarthModel,
        parameters={"scenario": str(SMALL), "overrides": [QUICK], "tariff_rate": [0.0, 0.3]},
        rng=[1, 2],
        max_steps=ticks,
        data_collection_period=-1,
        display_progress=False,
    )
    table = pd.DataFrame(results)
    assert len(table) == 4 and (table["Step"] == ticks).all()
    taxed = table["tariff_rate"] > 0
    assert (table.loc[taxed, "tariff_revenue_usd_million"] > 0).all()
    assert (table.loc[~taxed, "tariff_revenue_usd_million"] == 0).all()
    # batch_run's rows are the model's own: the same run stepped by hand agrees exactly
    model = RareEarthModel(scenario=SMALL, rng=2, overrides=QUICK, tariff_rate=0.3)
    for _ in range(ticks):
        model.step()
    mine = model.datacollector.get_model_vars_dataframe().iloc[-1]
    row = table[(table["tariff_rate"] == 0.3) & (table["iteration"] == 1)].iloc[0]
    columns = [c for c in mine.index if np.isfinite(mine[c])]
    assert row[columns].astype(float).tolist() == mine[columns].astype(float).tolist()


def test_levers_reach_event_settings_of_one_list_entry():
    floor = {"product": "oxide:NdPr", "level_usd_per_kg": 70, "mechanism": "price_gap_subsidy"}
    overrides = {
        "policies.price_floors": [floor],
        "events": [
            {"at": 3, "set": {"policies.price_floors.0": {**floor, "level_usd_per_kg": 90}}},
            {"at": 5, "set": {"policies.price_floors.0.level_usd_per_kg": 95}},
        ],
    }
    raised = resolve(SMALL, overrides, floor_level_usd_per_kg=100)
    assert raised.policies.price_floors[0].level_usd_per_kg == 100
    assert raised.events[0].set["policies.price_floors.0"]["level_usd_per_kg"] == 100
    assert raised.events[1].set == {"policies.price_floors.0.level_usd_per_kg": 100}
    removed = resolve(SMALL, overrides, floor_level_usd_per_kg=0)
    assert removed.policies.price_floors == [] and [e.set for e in removed.events] == [{}, {}]
