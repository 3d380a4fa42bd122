"""Paired policy runs for the policy-direction checks (MODEL.md §11.4), cached per session."""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd

from abm import run
from tests.worlds import CONFIGS

SEEDS = (0, 1, 2, 3, 4)
TICKS = 120  # 2025-01 to 2034-12: long enough for lead times of separation plants


@cache
def metrics(scenario: str, seed: int, overrides: tuple[str, ...] = ()) -> pd.DataFrame:
    """Metrics of one run (cached: several checks share runs)."""
    path = CONFIGS / f"{scenario}.yaml"
    return run(path, seed=seed, ticks=TICKS, overrides=list(overrides), keep_model=False).metrics


def paired(effect, policy: str, base: str = "baseline", policy_overrides=(), base_overrides=()):
    """Per seed: ``effect(policy_run, base_run)``; returns the array over seeds."""
    return np.array([
        effect(metrics(policy, seed, tuple(policy_overrides)),
               metrics(base, seed, tuple(base_overrides)))
        for seed in SEEDS
    ])
