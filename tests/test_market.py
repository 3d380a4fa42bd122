"""Clearing and pricing rules (abm.market), against hand cases and the per-agent oracle."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from abm import market
from tests.oracle import clear_reference


def random_market(rng, n_sellers, n_buyers, density=0.7):
    pairs = [(s, b) for b in range(n_buyers) for s in range(n_sellers) if rng.random() < density]
    if not pairs:
        pairs = [(0, 0)]
    seller = np.array([p[0] for p in pairs])
    buyer = np.array([p[1] for p in pairs])
    n = len(pairs)
    return dict(
        cost=rng.uniform(10, 100, n),
        seller=seller,
        buyer=buyer,
        eligible=rng.random(n) < 0.9,
        compliant=rng.random(n) < 0.5,
        demand=rng.uniform(0, 50, n_buyers),
        min_compliant=rng.uniform(0, 1, n_buyers),
        available=rng.uniform(0, 80, n_sellers),
        beta=float(rng.uniform(0.5, 30)),
        price_scale=np.full(n_buyers, 50.0),
        rounds=int(rng.integers(1, 5)),
    )


def run_vectorised(m):
    return market.clear(
        m["cost"],
        m["seller"],
        m["buyer"],
        m["eligible"],
        m["compliant"],
        m["demand"],
        m["min_compliant"],
        m["available"],
        m["beta"],
        m["price_scale"],
        m["rounds"],
    )


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 8), st.integers(1, 12))
def test_rationing_never_overfills_and_matches_oracle(seed, n_sellers, n_buyers):
    m = random_market(np.random.default_rng(seed), n_sellers, n_buyers)
    result = run_vectorised(m)
    sold = np.bincount(m["seller"], result.flow, minlength=n_sellers)
    got = np.bincount(m["buyer"], result.flow, minlength=n_buyers)
    # never more than a seller had, nor more than a buyer wanted (float slack 1e-9 t)
    assert np.all(sold <= m["available"] + 1e-9)
    assert np.all(got <= m["demand"] + 1e-9)
    assert np.all(result.flow >= 0)
    assert np.all(result.flow[~m["eligible"]] == 0)
    np.testing.assert_allclose(got + result.unmet, m["demand"], rtol=1e-9, atol=1e-9)
    flow, orders, unmet = clear_reference(
        m["cost"],
        m["seller"],
        m["buyer"],
        m["eligible"],
        m["compliant"],
        m["demand"],
        m["min_compliant"],
        m["available"],
        m["beta"],
        m["price_scale"],
        m["rounds"],
    )
    np.testing.assert_allclose(result.flow, flow, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(result.orders, orders, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(result.unmet, unmet, rtol=1e-9, atol=1e-9)


def test_compliant_share_is_bought_only_from_compliant_sellers():
    # buyer 0 needs 60 % compliant; the compliant seller is dearer and has plenty
    cost = np.array([10.0, 30.0])
    result = market.clear(
        cost,
        np.array([0, 1]),
        np.array([0, 0]),
        np.ones(2, bool),
        np.array([False, True]),
        np.array([100.0]),
        np.array([0.6]),
        np.array([1000.0, 1000.0]),
        1e9,
        np.array([20.0]),
        3,
    )
    assert result.flow[1] >= 60.0 - 1e-9
    np.testing.assert_allclose(result.flow, [40.0, 60.0])


def test_infinite_beta_is_cheapest_first_with_proportional_rationing():
    # two buyers want 60 each; the cheapest seller has 80, the next 100, the dearest 100
    cost = np.array([10.0, 20.0, 30.0, 10.0, 20.0, 30.0])
    seller = np.array([0, 1, 2, 0, 1, 2])
    buyer = np.array([0, 0, 0, 1, 1, 1])
    result = market.clear(
        cost,
        seller,
        buyer,
        np.ones(6, bool),
        np.zeros(6, bool),
        np.array([60.0, 60.0]),
        np.zeros(2),
        np.array([80.0, 100.0, 100.0]),
        1e12,
        np.full(2, 20.0),
        3,
    )
    # round 1: 120 ordered from seller 0, filled 2/3 -> 40 each; round 2: 20 each from seller 1
    np.testing.assert_allclose(result.flow, [40, 20, 0, 40, 20, 0], atol=1e-9)
    np.testing.assert_allclose(result.unmet, [0, 0], atol=1e-9)


def test_logit_splits_more_evenly_when_beta_is_low():
    cost = np.array([10.0, 12.0])
    args = (np.array([0, 0]), np.ones(2, bool), 1)
    sharp = market.logit_shares(cost, args[0], args[1], args[2], 50.0, np.array([10.0]))
    soft = market.logit_shares(cost, args[0], args[1], args[2], 1.0, np.array([10.0]))
    assert sharp[0] > soft[0] > 0.5
    np.testing.assert_allclose(sharp.sum(), 1.0)
    np.testing.assert_allclose(soft.sum(), 1.0)


def test_landed_cost_applies_duty_tariff_levy_transport_and_premium():
    landed = market.landed_cost(
        np.array([100.0]),
        np.array([0.1]),
        np.array([0.25]),
        np.array([5.0]),
        np.array([1.0]),
        np.array([2.0]),
    )
    np.testing.assert_allclose(landed, [100 * 1.1 * 1.25 + 5 + 1 + 2])


def test_excess_demand_raises_the_ask_and_excess_supply_lowers_it():
    ask = np.array([50.0, 50.0, 50.0, 50.0])
    orders = np.array([150.0, 50.0, 10.0, 5.0])
    available = np.array([100.0, 100.0, 100.0, 0.0])
    new = market.adjust_asks(ask, orders, available, 0.1, np.zeros(4))
    assert new[0] > 50.0  # orders above what is offered
    assert new[1] < 50.0 and new[2] < new[1]  # the larger the glut, the larger the cut
    np.testing.assert_allclose(new[2], 50 * np.exp(-0.1 * 0.9))
    np.testing.assert_allclose(new[3], 50 * np.exp(0.1))  # orders but nothing to offer


def test_ask_never_falls_below_the_floor():
    new = market.adjust_asks(
        np.array([10.0]), np.array([0.0]), np.array([100.0]), 1.0, np.array([9.0])
    )
    assert new[0] == 9.0
