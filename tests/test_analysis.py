"""Outcomes of a run, aggregation over replicates, and Sobol/Morris indices (abm.analysis)."""

import numpy as np
import pandas as pd
import pytest
from SALib.test_functions import Ishigami

from abm.analysis import (
    OUTCOMES,
    Outcome,
    aggregate,
    metric_bands,
    morris_table,
    salib_problem,
    sobol_table,
)
from abm.experiments import ParameterRange, design_points


def test_outcome_statistics_run_over_simulated_ticks_and_skip_nan():
    # tick 0 is the state after warm-up: excluded; 24 monthly ticks after it
    frame = pd.DataFrame({"a": [100.0, *range(1, 25)], "b": [0.0] * 25})
    frame.loc[5, "a"] = np.nan
    assert Outcome(("a",), "max").value(frame, 12) == 24
    assert Outcome(("a",), "last").value(frame, 12) == 24
    assert Outcome(("a",), "mean", last_years=1).value(frame, 12) == np.mean(range(13, 25))
    assert Outcome(("a",), "sum").value(frame, 12) == sum(range(1, 25)) - 5
    assert Outcome(("a", "b"), "min").value(frame, 12) == 1
    assert np.isnan(Outcome(("a",), "mean").value(frame.assign(a=np.nan), 12))


def test_catalogue_outcomes_name_real_metrics():
    from abm import RareEarthModel
    from abm.metrics import registry
    from tests.worlds import CONFIGS

    known = {m.name for m in registry(RareEarthModel(CONFIGS / "baseline.yaml", rng=0))}
    for name, outcome in OUTCOMES.items():
        assert set(outcome.metrics) <= known, name
        assert outcome.doc


def test_aggregate_gives_mean_and_quantile_bands_per_point():
    table = pd.DataFrame(
        {"tariff": [0.0] * 5 + [0.3] * 5, "y": [1.0, 2, 3, 4, 5, 10, 20, 30, 40, 50]}
    )
    result = aggregate(table, ["tariff"], ["y"], quantiles=(0.5,)).set_index("tariff")
    assert result.loc[0.0, "mean"] == 3 and result.loc[0.3, "q50"] == 30
    assert result.loc[0.3, "n"] == 5 and result.loc[0.0, "std"] == pytest.approx(
        np.std([1, 2, 3, 4, 5], ddof=1)
    )


def test_metric_bands_per_tick_and_group():
    metrics = pd.DataFrame(
        {"run_id": np.repeat([0, 1, 2], 3), "tick": np.tile([0, 1, 2], 3), "m": np.arange(9.0)}
    )
    bands = metric_bands(metrics, "m", pd.Series({0: "a", 1: "a", 2: "b"}), quantiles=(0.5,))
    row = bands[(bands["group"] == "a") & (bands["tick"] == 2)].iloc[0]
    assert row["n"] == 2 and row["mean"] == (2 + 5) / 2 and row["q50"] == 3.5


# Ishigami (A = 7, B = 0.1) on [-π, π]³ has known variance decomposition (Ishigami & Homma
# 1990; Saltelli et al. 2008): S1 = (0.3139, 0.4424, 0), ST = (0.5576, 0.4424, 0.2437).
A, B = 7.0, 0.1
V = A**2 / 8 + B * np.pi**4 / 5 + B**2 * np.pi**8 / 18 + 0.5
V1, V2 = 0.5 * (1 + B * np.pi**4 / 5) ** 2, A**2 / 8
V13 = B**2 * np.pi**8 / 18 - B**2 * np.pi**8 / 50
S1 = np.array([V1, V2, 0.0]) / V
ST = np.array([V1 + V13, V2, V13]) / V


@pytest.mark.parametrize("seed", [0, 1])
def test_sobol_design_and_analysis_recover_the_ishigami_indices(seed):
    parameters = {f"x{i}": ParameterRange(low=-np.pi, high=np.pi) for i in (1, 2, 3)}
    design = design_points(parameters, "sobol", samples=4096, seed=seed)
    assert len(design) == 4096 * (3 + 2)
    y = Ishigami.evaluate(design.to_numpy())
    problem = salib_problem({name: (p.low, p.high) for name, p in parameters.items()})
    table = sobol_table(problem, {"ishigami": y}, seed=seed)
    # Tolerance 0.02: with N = 4096 scrambled Sobol' points the observed error is below 0.003
    # (seeds 0-2) and the bootstrap 95 % half-widths are about 0.03; a design whose rows are
    # out of the order the estimator expects misses by more than 0.1.
    assert table["S1"].to_numpy() == pytest.approx(S1, abs=0.02)
    assert table["ST"].to_numpy() == pytest.approx(ST, abs=0.02)
    assert (np.abs(table["S1"] - S1) <= table["S1_conf"]).all()
    assert (np.abs(table["ST"] - ST) <= table["ST_conf"]).all()


def test_morris_recovers_the_effects_of_a_linear_function():
    parameters = {name: ParameterRange(low=0.0, high=1.0) for name in ("a", "b", "c")}
    design = design_points(parameters, "morris", samples=20, seed=3)
    assert len(design) == 20 * (3 + 1)
    x = design.to_numpy()
    y = 10 * x[:, 0] + 1 * x[:, 1] + 0 * x[:, 2]  # elementary effects are exactly 10, 1, 0
    problem = salib_problem({name: (0.0, 1.0) for name in parameters})
    table = morris_table(problem, x, {"linear": y})
    assert table["mu_star"].to_numpy() == pytest.approx([10, 1, 0], abs=1e-9)
    assert table["sigma"].to_numpy() == pytest.approx([0, 0, 0], abs=1e-9)


def test_a_failed_run_voids_only_its_saltelli_block():
    parameters = {f"x{i}": ParameterRange(low=-np.pi, high=np.pi) for i in (1, 2, 3)}
    design = design_points(parameters, "sobol", samples=1024, seed=0)
    y = Ishigami.evaluate(design.to_numpy())
    y[[7, 5 * 300 + 2]] = np.nan  # two failed runs, in blocks 1 and 300
    problem = salib_problem({name: (p.low, p.high) for name, p in parameters.items()})
    with pytest.warns(UserWarning, match="2 of 1024 design blocks"):
        table = sobol_table(problem, {"ishigami": y})
    assert (table["N"] == 1022).all()
    # 1022 of 1024 blocks: the bootstrap 95 % half-widths at this N are about 0.06
    assert table["S1"].to_numpy() == pytest.approx(S1, abs=0.05)
    assert table["ST"].to_numpy() == pytest.approx(ST, abs=0.05)
    with pytest.warns(UserWarning, match="2 of 2 design blocks"):
        assert sobol_table(
            salib_problem({"a": (0, 1)}), {"y": np.r_[np.nan, 1, 1, 1, np.nan, 1]}
        ).empty
