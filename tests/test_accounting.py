"""Accounting invariants (MODEL.md §11.1) on the baseline and on random small worlds.

Mass balance is checked to 1e-9 relative to the mass mined (floating-point accumulation over a
few hundred ticks stays orders of magnitude below that); money balance to 1e-9 relative to the
money that changed hands.
"""

import numpy as np
from hypothesis import HealthCheck, given, settings

from abm import RareEarthModel
from abm.scenario import build_scenario
from abm.world import OUTPUT
from tests.worlds import CONFIGS, small_worlds


def check_invariants(model: RareEarthModel) -> None:
    w = model.world
    s = w.stocks
    scale_t = max(model.mined_t_total + model.initial_reo_t, 1.0)
    assert abs(model.mass_balance_error_t()) <= 1e-9 * scale_t, model.tick
    flows = abs(model.accounts["operating_costs"]) + abs(w.buyers.cash_usd_million).sum() + 1.0
    assert abs(model.money_balance_error_usd_million()) <= 1e-9 * flows, model.tick
    for name, values in (
        ("qty", s.qty_t),
        ("transit", w.transit_t),
        ("ask", s.ask_usd_per_kg),
        ("expected", s.expected_price_usd_per_kg),
        ("attrs", s.attrs),
        ("capacity", w.producers.capacity_t_per_yr),
    ):
        assert np.all(np.isfinite(values)), (name, model.tick)
        assert np.all(values >= 0), (name, model.tick)
    held = s.qty_t > 0
    origin = s.attrs[held, : w.layout.n_origin].sum(axis=1)
    np.testing.assert_allclose(origin, 1.0, atol=1e-9)
    comp = s.attrs[held][:, w.layout.composition].sum(axis=1)
    np.testing.assert_allclose(comp, 1.0, atol=1e-9)
    flags = s.attrs[:, [w.layout.processed_cn, w.layout.touched_cn]]
    assert np.all((flags >= -1e-12) & (flags <= 1 + 1e-12))
    assert np.all(s.ask_usd_per_kg[s.role == OUTPUT] > 0)


def run_checked(model: RareEarthModel, ticks: int) -> RareEarthModel:
    check_invariants(model)
    for _ in range(ticks):
        model.step()
        check_invariants(model)
    return model


def test_baseline_keeps_every_invariant_every_tick():
    model = run_checked(RareEarthModel(CONFIGS / "baseline.yaml", rng=3), 120)
    frame = model.datacollector.get_model_vars_dataframe()
    assert len(frame) == 121
    assert model.mined_t_total > 0 and model.consumed_reo_t_total > 0


def test_small_world_keeps_every_invariant_every_tick():
    run_checked(RareEarthModel(CONFIGS / "tests" / "small.yaml", rng=1), 60)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_worlds())
def test_random_worlds_keep_every_invariant(raw):
    model = RareEarthModel(build_scenario(raw), rng=0)
    run_checked(model, raw["ticks"])
