"""Agent-based model of the rare-earth market and of alliance and China policy levers.

The public API, in the order a study uses it::

    from abm import load_scenario, RareEarthModel, run
    scenario = load_scenario("configs/baseline.yaml", ["market.logit_beta=12"])
    result = run(scenario, seed=1, ticks=120)
    result.metrics            # pandas DataFrame, one row per tick
"""

from __future__ import annotations

from abm.model import RareEarthModel
from abm.runs import Result, run
from abm.scenario import Scenario, ScenarioError, load_scenario

__all__ = ["RareEarthModel", "Result", "Scenario", "ScenarioError", "load_scenario", "run"]
