"""Agent-based model of the rare-earth market and of alliance and China policy levers.

The public API, in the order a study uses it::

    from abm import load_scenario, RareEarthModel, run
    scenario = load_scenario("configs/baseline.yaml", ["market.logit_beta=12"])
    result = run(scenario, seed=1, ticks=120)
    result.metrics            # pandas DataFrame, one row per tick
    results = sweep("configs/sweeps/tariff_x_floor.yaml")   # many runs, on Dask
    results.table()           # experiments joined with outcomes, one row per run
"""

from __future__ import annotations

from abm.analysis import SweepResults, load_sweep
from abm.model import RareEarthModel
from abm.runs import Result, run
from abm.scenario import Scenario, ScenarioError, load_scenario
from abm.sweeps import sweep

__all__ = [
    "RareEarthModel",
    "Result",
    "Scenario",
    "ScenarioError",
    "SweepResults",
    "load_scenario",
    "load_sweep",
    "run",
    "sweep",
]
