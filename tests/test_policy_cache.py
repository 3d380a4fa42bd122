"""Policy terms kept between ticks (abm/policy.py): always those a full refresh computes.

``PolicyState.refresh`` recomputes the per-edge terms only when the policies, blocs, events in
force or built producers changed. Each test watches every refresh of a model and compares its
terms with those of a new ``PolicyState`` (nothing kept) refreshed at the same point: they must
be equal exactly, as the kept terms are the arrays a full refresh computed with the same
arithmetic, and trajectories are sensitive to the last bit.
"""

import numpy as np

from abm import RareEarthModel
from abm.policy import PolicyState
from abm.world import BLOCS, CONSTRUCTION, IDLE, MINE, PLANNED, PROCESSOR
from tests.test_policy import edges_of, model_with
from tests.worlds import CONFIGS

EDGE_TERMS = ("tariff", "duty", "allowed", "transport_usd_per_kg")
POLICY_TERMS = (
    "export_group",
    "capacity_factor",
    "demand_factor",
    "quota_left_t",
    "quota_share",
    "licence_delay_ticks",
    "approval",
)
TARIFF = "policies.tariffs=[{origin: china, destination: alliance, product: magnet, rate: 0.5}]"
HEAVY = [
    TARIFF,
    "policies.export_duties=[{product: oxide:NdPr, rate: 0.1}]",
    "policies.export_controls=[{product: magnet, destination: alliance, quota_t_per_yr: 1200, "
    "approval_probability: 0.8, delay_months: 2}, {product: oxide:NdPr, quota_t_per_yr: 0}]",
    "policies.preference={zero_internal_tariffs: true, transport_discount_share: 0.2}",
    "policies.compliance.ban_allied_mines_to_china=true",
    "events=[{at: 2, outage: [cn_mine], duration_months: 2}, "
    "{at: 3, transport_cut: {between: CN, and: JP}, duration_months: 3}, "
    "{at: 4, set: {alliance: [US, JP, AU]}, duration_months: 6}, "
    "{at: 5, demand_shock: {multiplier: 0.5, where: alliance}, duration_months: 4}, "
    "{at: 8, set: {policies.export_duties: [{product: any, rate: 0.3}]}}]",
]


def terms_in_force(model: RareEarthModel, policy: PolicyState) -> dict[str, np.ndarray]:
    e = model.world.edges
    terms = {name: getattr(e, name) for name in EDGE_TERMS}
    terms |= {name: getattr(policy, name) for name in POLICY_TERMS}
    return terms | {"country_bloc": model.world.country_bloc}


def watch(model: RareEarthModel) -> list[int]:
    """Compare every later refresh of the model with a full one; returns the ticks compared."""
    policy, refresh, compared = model.policy, model.policy.refresh, []

    def refresh_and_compare() -> None:
        orders, demand = policy.export_orders_t.copy(), policy.export_demand_t.copy()
        refresh()
        kept = terms_in_force(model, policy)
        full = PolicyState(model)  # nothing kept: its first refresh computes every term
        full.effects = list(policy.effects)
        full.export_orders_t, full.export_demand_t = orders, demand
        full.refresh()
        for name, value in terms_in_force(model, full).items():
            assert value.dtype == kept[name].dtype, (model.tick, name)
            assert np.array_equal(value, kept[name]), (model.tick, name)
        e = model.world.edges
        for name in EDGE_TERMS:  # leave the model's own terms in place
            setattr(e, name, kept[name])
        model.world.country_bloc = kept["country_bloc"]
        compared.append(model.tick)

    policy.refresh = refresh_and_compare
    return compared


def test_a_scenario_edited_in_place_between_ticks_takes_effect_next_tick():
    model = model_with(TARIFF, "policies.preference.transport_discount_share=0.5")
    compared = watch(model)
    e, w = model.world.edges, model.world
    taxed, au_to_us = edges_of(model, "CN", "US", "magnet"), edges_of(model, "AU", "US")
    model.step()
    assert np.all(e.tariff[taxed] == 0.5)
    assert np.array_equal(e.transport_usd_per_kg[au_to_us], e.base_transport_usd_per_kg[au_to_us])
    model.config.policies.tariffs[0].rate = 0.8
    model.step()
    assert np.all(e.tariff[taxed] == 0.8)
    model.config.alliance.append("AU")  # only the blocs change
    model.step()
    assert w.country_bloc[w.layout.countries.index("AU")] == BLOCS.index("alliance")
    assert np.array_equal(
        e.transport_usd_per_kg[au_to_us], 0.5 * e.base_transport_usd_per_kg[au_to_us]
    )
    model.config.policies.compliance.ban_allied_mines_to_china = True
    model.step()
    assert not e.allowed[edges_of(model, "AU", "CN", "concentrate")].any()
    assert compared == [1, 2, 3, 4]


def test_events_change_the_terms_when_they_apply_and_when_they_expire():
    events = (
        "events=[{at: 3, transport_cut: {between: CN, and: alliance}, duration_months: 2}, "
        "{at: 4, set: {policies.export_duties: [{product: any, rate: 0.2}]}, "
        "duration_months: 3}, {at: 2, outage: [cn_mine], duration_months: 2}]"
    )
    model = model_with(events)
    compared = watch(model)
    cn_to_us = edges_of(model, "CN", "US")
    cn_mine = model.world.producers.names.index("cn_mine")
    cut, duty, outage = [], [], []
    for _ in range(8):
        model.step()
        cut.append(not model.world.edges.allowed[cn_to_us].any())
        duty.append(float(model.world.edges.duty[cn_to_us].max()))
        outage.append(model.policy.capacity_factor[cn_mine] == 0)
    # ticks 1..8: the cut in force at 3–4, the duty at 4–6, the outage at 2–3
    assert cut == [False, False, True, True, False, False, False, False]
    assert duty == [0.0, 0.0, 0.0, 0.2, 0.2, 0.2, 0.0, 0.0]
    assert outage == [False, True, True, False, False, False, False, False]
    assert compared == list(range(1, 9))


def test_allowed_follows_producer_status_however_it_is_changed():
    model = model_with()
    compared = watch(model)
    w, e, s = model.world, model.world.edges, model.world.stocks
    p = w.producers
    project = p.names.index("au_new_mine")
    sells = np.isin(s.owner_kind[e.seller], (MINE, PROCESSOR)) & (s.owner[e.seller] == project)
    assert sells.any() and p.status[project] == PLANNED
    model.step()
    assert not e.allowed[sells].any()  # not built yet
    p.status[project] = CONSTRUCTION  # edited in place
    model.step()
    assert e.allowed[sells].all()
    p.status = np.where(np.arange(len(p.status)) == project, IDLE, p.status)  # replaced
    model.step()
    assert e.allowed[sells].all()  # idle is still built
    p.status[project] = PLANNED
    model.step()
    assert not e.allowed[sells].any()
    assert compared == [1, 2, 3, 4]


def test_kept_terms_equal_a_full_refresh_every_tick_of_policy_heavy_runs():
    heavy = model_with(*HEAVY)
    compared = watch(heavy)
    for _ in range(24):
        heavy.step()
    assert compared == list(range(1, 25))
    assert len(heavy.policy.applied) == 5 and len(heavy.policy.effects) == 1  # 4 expired
    crisis = RareEarthModel(CONFIGS / "crisis_2010.yaml", rng=0)
    compared = watch(crisis)
    for _ in range(crisis.config.ticks):
        crisis.step()
    assert compared == list(range(1, crisis.config.ticks + 1))
    assert len(crisis.policy.applied) == len(crisis.config.events) > 0
