"""Random small worlds (hypothesis strategies) and helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path

from hypothesis import strategies as st

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
REGIONS = ["asia", "europe", "americas", "oceania", "africa"]


@st.composite
def small_worlds(draw) -> dict:
    """A valid random scenario: 2–4 countries, 1–3 elements, optional magnet stage."""
    n_c = draw(st.integers(2, 4))
    countries = ["CN", "US", "AU", "JP"][:n_c]
    elements = ["NdPr", "DyTb", "other"][: draw(st.integers(1, 3))]
    magnet = draw(st.booleans())
    pos = st.floats(0.5, 20.0)

    def composition():
        raw = [draw(st.floats(0.05, 1.0)) for _ in elements]
        shares = [round(r / sum(raw), 6) for r in raw]
        shares[-1] = round(1.0 - sum(shares[:-1]), 6)
        return dict(zip(elements, shares, strict=True))

    mines = [
        dict(
            name=f"mine{i}",
            country=draw(st.sampled_from(countries)),
            capacity_t_per_yr=draw(st.floats(0, 50_000)),
            cash_cost_usd_per_kg=draw(pos),
            composition=composition(),
        )
        for i in range(draw(st.integers(1, 3)))
    ]
    seps = [
        dict(
            name=f"sep{i}",
            country=draw(st.sampled_from(countries)),
            stage="separation",
            capacity_t_per_yr=draw(st.floats(100, 50_000)),
            processing_cost_usd_per_kg=draw(pos),
            recovery={e: draw(st.floats(0.5, 1.0)) for e in elements},
        )
        for i in range(draw(st.integers(1, 2)))
    ]
    recipe = {elements[0]: 0.3}
    mags = (
        [
            dict(
                name=f"mag{i}",
                country=draw(st.sampled_from(countries)),
                stage="magnet",
                capacity_t_per_yr=draw(st.floats(100, 30_000)),
                processing_cost_usd_per_kg=draw(pos),
            )
            for i in range(draw(st.integers(1, 2)))
        ]
        if magnet
        else []
    )
    products = (["magnet"] if magnet else []) + [f"oxide:{e}" for e in elements[1:]]
    if not products:
        products = [f"oxide:{elements[0]}"]
    buyers = [
        dict(
            name=f"buyer{i}",
            country=draw(st.sampled_from(countries)),
            product=draw(st.sampled_from(products)),
            base_demand_t_per_yr=draw(st.floats(0, 20_000)),
            elasticity=draw(st.floats(0, 1)),
            reference_price_usd_per_kg=50.0,
            reservation_price_usd_per_kg=500.0,
            min_compliant_share=draw(st.sampled_from([0.0, 0.0, 0.5])),
            security_premium_share=draw(st.floats(0, 0.3)),
            switching_cost_usd_per_kg=draw(st.floats(0, 2)),
        )
        for i in range(draw(st.integers(1, 4)))
    ]
    prices = {"concentrate": 8.0, **{f"oxide:{e}": 40.0 for e in elements}}
    if magnet:
        prices["magnet"] = 60.0
    return dict(
        name="random",
        ticks=24,
        alliance=[c for c in countries if c in ("US", "JP")],
        elements=elements,
        countries={c: {"region": draw(st.sampled_from(REGIONS))} for c in countries},
        magnet={"recipe_t_per_t": recipe} if magnet else None,
        initial_prices_usd_per_kg=prices,
        market={
            "warmup_ticks": draw(st.integers(0, 6)),
            "logit_beta": draw(st.floats(0.5, 50)),
            "price_noise": draw(st.floats(0, 0.05)),
        },
        investment={"interval_months": 6},
        mines=mines,
        processors=seps + mags,
        buyers=buyers,
        projects=[
            dict(
                name="project0",
                country=countries[-1],
                stage="separation",
                capacity_t_per_yr=1000,
                unit_cost_usd_per_kg=1.0,
                capex_usd_million=1,
                earliest_start="2025-02",
                lead_time_years=0.5,
                recovery={e: 0.9 for e in elements},
            )
        ],
    )
