"""Policy levers (MODEL.md §8): each one's mechanics, its money flows, and dated events."""

import numpy as np
import pytest

from abm import RareEarthModel, ScenarioError, load_scenario, run
from tests.test_accounting import check_invariants
from tests.worlds import CONFIGS

SMALL = CONFIGS / "tests" / "small.yaml"
QUIET = ["market.price_noise=0"]
# all ore mined in Australia: US separation sells compliant oxide (no CN mine or plant in it)
COMPLIANT_ORE = ["mines.cn_mine.country=AU", "processors.us_sep.capacity_t_per_yr=15000"]


def model_with(*overrides, seed=0):
    return RareEarthModel(SMALL, rng=seed, overrides=[*QUIET, *overrides])


def step_checked(model, ticks):
    for _ in range(ticks):
        model.step()
        check_invariants(model)
    return model


def edges_of(model, seller_country=None, buyer_country=None, product=None):
    w = model.world
    e, s = w.edges, w.stocks
    mask = np.ones(len(e.seller), dtype=bool)
    if seller_country:
        mask &= s.country[e.seller] == w.layout.countries.index(seller_country)
    if buyer_country:
        mask &= s.country[e.buyer] == w.layout.countries.index(buyer_country)
    if product:
        mask &= e.product == w.products.index(product)
    return mask


def test_tariff_applies_to_matching_edges_and_raises_alliance_landed_price():
    tariff = "policies.tariffs=[{origin: china, destination: alliance, product: magnet, rate: 0.5}]"
    taxed = step_checked(model_with(tariff), 24)
    e = taxed.world.edges
    assert np.all(e.tariff[edges_of(taxed, "CN", "US", "magnet")] == 0.5)
    assert np.all(e.tariff[edges_of(taxed, "CN", "CN", "magnet")] == 0.0)
    assert np.all(e.tariff[edges_of(taxed, "JP", "US", "magnet")] == 0.0)  # in-alliance
    assert np.all(e.tariff[edges_of(taxed, "CN", "US", "oxide:NdPr")] == 0.0)
    frame = taxed.datacollector.get_model_vars_dataframe()
    assert frame["tariff_revenue_usd_million"].iloc[1:].sum() > 0
    free = step_checked(model_with(), 24).datacollector.get_model_vars_dataframe()
    column = "price_alliance_landed_magnet"
    assert frame[column].iloc[6:].mean() > free[column].iloc[6:].mean()


def test_export_duty_is_paid_on_exports_only():
    model = step_checked(model_with("policies.export_duties=[{product: any, rate: 0.2}]"), 12)
    e = model.world.edges
    assert np.all(e.duty[edges_of(model, "CN", "US")] == 0.2)
    assert np.all(e.duty[edges_of(model, "CN", "CN")] == 0.0)
    assert np.all(e.duty[edges_of(model, "AU", "US")] == 0.0)
    assert model.accounts["duty_revenue"] > 0


def test_export_quota_caps_monthly_exports():
    quota = 1200.0  # t magnet per year -> 100 t per month
    control = f"policies.export_controls=[{{product: magnet, quota_t_per_yr: {quota}}}]"
    model = model_with(control)
    exports = edges_of(model, "CN", None, "magnet") & ~edges_of(model, None, "CN")
    exported = []
    for _ in range(24):
        model.step()
        check_invariants(model)
        exported.append(model.world.edges.flow_t[exports].sum())
        assert exported[-1] <= quota / 12 + 1e-9
    assert max(exported) >= quota / 12 * (1 - 1e-9)  # it binds
    # domestic buyers are not limited: export prices rise above domestic ones (two tiers)
    frame = model.datacollector.get_model_vars_dataframe().iloc[6:]
    assert (frame["two_tier_spread_magnet"] > 0.5 * frame["price_cn_domestic_magnet"]).all()


def test_zero_quota_stops_exports_and_licensing_delays_them():
    model = step_checked(
        model_with("policies.export_controls=[{product: magnet, quota_t_per_yr: 0}]"), 6
    )
    exports = edges_of(model, "CN", None, "magnet") & ~edges_of(model, None, "CN")
    assert not model.world.edges.allowed[exports].any()
    assert model.world.edges.flow_t[exports].sum() == 0
    licensed = step_checked(
        model_with(
            "policies.export_controls=[{product: magnet, approval_probability: 0.5, "
            "delay_months: 3}]"
        ),
        1,
    )
    assert np.all(licensed.policy.extra_lead(slice(None))[exports] == 3)
    granted = np.mean([licensed.policy.licensed(slice(None))[exports].mean() for _ in range(200)])
    assert 0.4 < granted < 0.6


def test_ban_on_allied_mines_selling_to_china():
    model = step_checked(
        model_with("alliance=[US, JP, AU]", "policies.compliance.ban_allied_mines_to_china=true"),
        12,
    )
    banned = edges_of(model, "AU", "CN", "concentrate")
    assert banned.any() and not model.world.edges.allowed[banned].any()
    assert model.world.edges.flow_t[banned].sum() == 0


def test_preference_discounts_transport_inside_the_alliance():
    model = step_checked(model_with("policies.preference.transport_discount_share=0.5"), 1)
    e = model.world.edges
    inside = edges_of(model, "JP", "US")
    np.testing.assert_allclose(
        e.transport_usd_per_kg[inside], 0.5 * e.base_transport_usd_per_kg[inside]
    )
    outside = edges_of(model, "CN", "US")
    np.testing.assert_allclose(
        e.transport_usd_per_kg[outside], e.base_transport_usd_per_kg[outside]
    )


def test_events_apply_at_their_date_and_revert_after_their_span():
    events = (
        "events=[{at: 3, outage: [cn_mine], duration_months: 4}, "
        "{at: '2025-03', set: {alliance: [US, JP, AU]}}, "
        "{at: 2, demand_shock: {multiplier: 0.5, where: alliance}, duration_months: 2}]"
    )
    model = model_with(events)
    cn_mine = model.world.producers.names.index("cn_mine")
    au = model.world.layout.countries.index("AU")
    us_buyer = model.world.buyers.names.index("us_ev")
    outputs, needs = [], []
    for _ in range(10):
        model.step()
        check_invariants(model)
        outputs.append(model.world.producers.output_t[cn_mine])
        needs.append(model.world.buyers.need_t[us_buyer])
    assert outputs[1] > 0 and all(o == 0 for o in outputs[2:6]) and outputs[7] > 0
    assert model.world.country_bloc[au] == 0  # alliance
    assert needs[2] == pytest.approx(0.5 * needs[0], rel=0.05)
    assert needs[5] == pytest.approx(needs[0], rel=0.05)


def test_price_gap_subsidy_pays_compliant_sellers_and_counts_in_money_balance():
    floor = (
        "policies.price_floors=[{product: 'oxide:NdPr', level_usd_per_kg: 500, "
        "mechanism: price_gap_subsidy}]"
    )
    model = model_with(floor, *COMPLIANT_ORE)
    ndpr = edges_of(model, product="oxide:NdPr")
    paid = []
    for _ in range(24):
        model.step()
        check_invariants(model)
        w, e = model.world, model.world.edges
        compliant = w.stocks.attrs[e.seller, w.layout.touched_cn] < 1e-9
        covered = ndpr & compliant & (e.flow_t > 0)
        expected = (e.flow_t[covered] * np.maximum(500 - model.edge_ask[covered], 0)).sum() / 1000
        assert model.tick_fiscal["floor_subsidy"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
        paid.append(expected)
    assert sum(paid) > 0


def test_border_adjusted_floor_keeps_alliance_landed_price_at_least_the_floor():
    level = 150.0
    floor = (
        f"policies.price_floors=[{{product: magnet, level_usd_per_kg: {level}, "
        "mechanism: border_adjusted}]"
    )
    model = model_with(floor)
    into = edges_of(model, None, "US", "magnet") | edges_of(model, None, "JP", "magnet")
    for _ in range(12):
        model.step()
        check_invariants(model)
        e = model.world.edges
        imports = (
            into & (e.flow_t > 0) & ~edges_of(model, "US", "US") & ~edges_of(model, "JP", "JP")
        )
        compliant = model.compliant_rows(e.seller)
        assert np.all(model.edge_landed[imports & ~compliant] >= level - 1e-9)  # levy
        # compliant sales into the alliance settle at the floor or above: a minimum price
        assert np.all(model.edge_ask[into & (e.flow_t > 0) & compliant] >= level - 1e-9)
    assert model.accounts["levy_revenue"] > 0


def test_offtake_buys_the_volume_at_the_floor_into_the_reserve():
    floor = (
        "policies.price_floors=[{product: 'oxide:NdPr', level_usd_per_kg: 90, "
        "mechanism: offtake, offtake_t_per_yr: 120}]"
    )
    model = model_with(floor, *COMPLIANT_ORE)
    start = model.reserve.stock_t
    step_checked(model, 12)
    assert model.reserve.stock_t - start == pytest.approx(120.0, rel=1e-6)
    assert model.accounts["offtake_purchases"] == pytest.approx(120 * 90 / 1000, rel=1e-6)
    rows = list(model.reserve.rows)
    touched = model.world.stocks.attrs[rows, model.world.layout.touched_cn]
    assert np.all(touched < 1e-9)  # only compliant material


def test_reserve_buys_below_trigger_within_budget_and_releases_in_a_crisis():
    reserve = (
        "policies.reserve={product: 'oxide:NdPr', owner: alliance, "
        "loan_usd_million: 5, private_usd_million: 1, target_months: 6, "
        "buy_trigger_usd_per_kg: 1000, release_trigger_usd_per_kg: 2000, "
        "max_buy_share_per_month: 0.5}"
    )
    model = step_checked(model_with(reserve, *COMPLIANT_ORE), 24)
    frame = model.datacollector.get_model_vars_dataframe()
    assert frame["reserve_stock_t"].iloc[-1] > 0
    assert model.reserve.spent_usd_million <= 6.0 + 1e-9
    assert model.accounts["reserve_carrying_cost"] > 0
    assert frame["reserve_release_t"].sum() == 0
    # the same reserve releases once the alliance's landed price is above the trigger
    crisis = model_with(
        reserve.replace("release_trigger_usd_per_kg: 2000", "release_trigger_usd_per_kg: 1001"),
        *COMPLIANT_ORE,
    )
    step_checked(crisis, 12)
    crisis.config.policies.reserve.release_trigger_usd_per_kg = 1e-3 + 1000
    s = crisis.world.stocks
    before = crisis.reserve.stock_t
    rows = np.flatnonzero((s.product == crisis.world.products.index("oxide:NdPr")) & (s.role == 1))
    s.expected_price_usd_per_kg[rows] = 5000.0
    crisis.step()
    check_invariants(crisis)
    assert crisis.reserve.tick_released_t > 0 and before > 0


def test_strategic_pricing_cuts_export_asks_below_cost_while_budget_lasts():
    pricing = (
        "policies.china_pricing={mode: strategic, trigger_non_cn_share: 0.0, "
        "export_price_fraction: 0.5, budget_usd_million: 50}"
    )
    model = model_with(pricing, *COMPLIANT_ORE)
    step_checked(model, 3)
    assert model.policy.strategic_active
    frame = model.datacollector.get_model_vars_dataframe()
    fob, domestic = (
        frame["price_export_fob_magnet"].iloc[-1],
        frame["price_cn_domestic_magnet"].iloc[-1],
    )
    assert fob < domestic
    step_checked(model, 60)
    assert model.policy.strategic_spent_usd_million >= 50  # the budget ran out
    assert not model.policy.strategic_active


def test_all_levers_together_keep_every_invariant():
    levers = [
        "policies.tariffs=[{origin: china, destination: alliance, rate: 0.25}]",
        "policies.export_duties=[{product: any, rate: 0.1}]",
        "policies.export_controls=[{product: 'oxide:NdPr', quota_t_per_yr: 500, "
        "approval_probability: 0.8, delay_months: 2}]",
        "policies.price_floors=[{product: 'oxide:NdPr', level_usd_per_kg: 110, "
        "mechanism: price_gap_subsidy, upside_share: 0.3}, {product: magnet, "
        "level_usd_per_kg: 80, mechanism: border_adjusted}]",
        "policies.compliance={min_compliant_share: 0.1, ban_allied_mines_to_china: true}",
        "policies.reserve={product: 'oxide:NdPr', loan_usd_million: 10, "
        "buy_trigger_usd_per_kg: 80, release_trigger_usd_per_kg: 150}",
        "policies.china_pricing={mode: strategic, trigger_non_cn_share: 0.05}",
        "events=[{at: 6, outage: [cn_sep], duration_months: 3}, "
        "{at: 10, transport_cut: {between: CN, and: JP}, duration_months: 2}]",
    ]
    step_checked(RareEarthModel(SMALL, rng=3, overrides=levers), 48)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        (
            "policies.tariffs=[{origin: XX, destination: US, rate: 0.1}]",
            "policies.tariffs.0.origin",
        ),
        (
            "policies.price_floors=[{product: 'oxide:Zz', level_usd_per_kg: 5, "
            "mechanism: offtake}]",
            "policies.price_floors.0.product",
        ),
        ("events=[{at: 9999, outage: [cn_mine]}]", "events.0.at"),
        ("events=[{at: 1, outage: [nobody]}]", "events.0.outage.0"),
        ("events=[{at: 1, set: {policies.tariffs.0.rate: 0.1}}]", "events.0.set"),
        ("events=[{at: 1, set: {ticks: 5}}]", "events.0.set.ticks"),
        (
            "policies.reserve={buy_trigger_usd_per_kg: 10, release_trigger_usd_per_kg: 5}",
            "policies.reserve.release_trigger_usd_per_kg",
        ),
    ],
)
def test_bad_policies_and_events_are_rejected_with_the_key(override, key):
    with pytest.raises(ScenarioError) as info:
        load_scenario(SMALL, [override])
    assert key in str(info.value) and "\n" not in str(info.value)


def test_policy_runs_are_reproducible():
    overrides = ["policies.export_controls=[{product: magnet, approval_probability: 0.5}]"]
    a = run(SMALL, seed=4, ticks=24, overrides=overrides).metrics
    b = run(SMALL, seed=4, ticks=24, overrides=overrides).metrics
    assert a.equals(b)


# ------------------------------------------------------------------ mechanisms of issue 3's fixes


def test_captive_mine_sells_only_to_its_plants():
    model = step_checked(model_with("mines.au_mine.sells_to=[us_sep]"), 12)
    w = model.world
    mine_row = w.producers.output_rows[w.producers.names.index("au_mine"), 0]
    from_mine = w.edges.seller == mine_row
    buyers = {model.producer_agents[w.stocks.owner[b]].name for b in w.edges.buyer[from_mine]}
    assert buyers == {"us_sep"}  # cn_sep's edge from the captive mine does not exist
    assert w.edges.flow_t[from_mine].sum() > 0


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("mines.au_mine.sells_to=[nowhere]", "mines.1.sells_to.0"),
        ("mines.au_mine.sells_to=[jp_magnet]", "mines.1.sells_to.0"),
        ("projects.us_new_sep.sells_to=[us_sep]", "projects.1.sells_to"),
    ],
)
def test_captive_supply_must_name_separation_plants(override, key):
    with pytest.raises(ScenarioError) as err:
        load_scenario(SMALL, [override])
    assert err.value.key == key


def test_captive_mine_project_waits_for_its_plant():
    model = model_with(
        "projects.au_new_mine.sells_to=[us_new_sep]",
        "projects.us_new_sep.earliest_start='2029-01'",
        "projects.au_new_mine.capex_usd_million=0",
    )
    step_checked(model, 36)
    p = model.world.producers
    mine, plant = p.names.index("au_new_mine"), p.names.index("us_new_sep")
    # the plant may not start before 2029, so its captive mine must not either
    assert p.status[plant] == 0 and p.status[mine] == 0


def test_unused_quota_of_one_product_passes_to_the_products_after_it():
    # one quota on every product; nobody abroad buys Chinese concentrate, so its share of the
    # quota must pass on to oxide and magnet exports in the same tick
    quota = 2400.0
    model = model_with(f"policies.export_controls=[{{product: any, quota_t_per_yr: {quota}}}]")
    exports = edges_of(model, "CN") & ~edges_of(model, None, "CN")
    exported = []
    for _ in range(24):
        model.step()
        check_invariants(model)
        exported.append(model.world.edges.flow_t[exports].sum())
        assert exported[-1] <= quota / 12 * (1 + 1e-9)
    assert max(exported[6:]) >= quota / 12 * 0.99  # the whole quota is used


def test_price_gap_floor_lets_covered_sellers_undercut():
    floor = (
        "policies.price_floors=[{product: 'oxide:NdPr', level_usd_per_kg: 500, "
        "mechanism: price_gap_subsidy}]"
    )
    model = model_with(floor, *COMPLIANT_ORE)
    s = model.world.stocks
    rows = np.flatnonzero((s.product == model.world.products.index("oxide:NdPr")) & (s.role == 0))
    cost = model._cost_floor(rows)
    floors = model.policy.subsidised_ask_floor(rows, cost)
    compliant = model.compliant_rows(rows)
    assert compliant.any() and (~compliant).any()
    assert np.all(floors[compliant] == 0.0)  # F covers their cost: any ask is worth taking
    np.testing.assert_array_equal(floors[~compliant], cost[~compliant])


def test_strategic_pricing_cuts_only_the_listed_products():
    pricing = (
        "policies.china_pricing={mode: strategic, trigger_non_cn_share: 0.0, "
        "export_price_fraction: 0.5, budget_usd_million: 1000, products: ['oxide:NdPr']}"
    )
    model = step_checked(model_with(pricing, *COMPLIANT_ORE), 3)
    assert model.policy.strategic_active
    e = model.world.edges
    magnets = edges_of(model, "CN", None, "magnet") & ~edges_of(model, None, "CN")
    ndpr = edges_of(model, "CN", None, "oxide:NdPr") & ~edges_of(model, None, "CN")
    own = model.world.stocks.ask_usd_per_kg[e.seller]
    cut = model.policy.export_asks(slice(None), own, model._cost_floor(e.seller))
    np.testing.assert_array_equal(cut[magnets], own[magnets])
    assert np.all(cut[ndpr] <= own[ndpr]) and np.any(cut[ndpr] < own[ndpr])


def test_reserve_initial_stock_is_compliant_and_bears_carrying_cost():
    reserve = (
        "policies.reserve={product: 'oxide:NdPr', owner: alliance, loan_usd_million: 100, "
        "target_months: 6, buy_trigger_usd_per_kg: 1, release_trigger_usd_per_kg: 1000, "
        "initial_stock_t: 300}"
    )
    model = model_with(reserve, *COMPLIANT_ORE)
    assert model.reserve.stock_t == pytest.approx(300.0)
    rows = list(model.reserve.rows)
    assert np.all(model.compliant_rows(np.array(rows)) | (model.world.stocks.qty_t[rows] == 0))
    step_checked(model, 12)  # mass and money balance with the seeded stock
    assert model.accounts["reserve_carrying_cost"] > 0


def test_fixed_costs_are_paid_and_keep_money_balanced():
    model = step_checked(model_with("investment.fixed_cost_share=0.4"), 12)
    base = step_checked(model_with(), 12)
    assert model.accounts["operating_costs"] > 0
    # at full capacity costs are unchanged; below it, fixed costs make operating costs higher
    assert model.accounts["operating_costs"] != pytest.approx(base.accounts["operating_costs"])


def test_paired_runs_share_random_numbers_until_the_policy_acts():
    reserve = (
        "policies.reserve={product: 'oxide:NdPr', owner: alliance, loan_usd_million: 100, "
        "target_months: 6, buy_trigger_usd_per_kg: 1, release_trigger_usd_per_kg: 1e6}"
    )
    noisy = "market.price_noise=0.02"
    a = RareEarthModel(SMALL, rng=3, overrides=[noisy])
    b = RareEarthModel(SMALL, rng=3, overrides=[noisy, reserve])
    for _ in range(12):
        a.step()
        b.step()
    # the reserve (buying at most at $1/kg) never trades: the two runs are the same
    rows = np.flatnonzero(a.world.stocks.owner_kind != 3)
    np.testing.assert_array_equal(
        a.world.stocks.ask_usd_per_kg[rows], b.world.stocks.ask_usd_per_kg[rows]
    )
