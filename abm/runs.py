"""Running a model and writing run folders: ``run()``, :class:`Result`, manifests, Parquet.

A run folder ``runs/<timestamp>_<scenario>/`` holds ``manifest.json`` (resolved config, seed,
git commit and dirty flag, Python and package versions, start and end time, status),
``config.yaml``, ``metrics.parquet`` (one row per tick), ``flows.parquet`` (edge flows) and
``summary.png``. It is written to a hidden temporary folder and renamed when complete, so a
folder that exists under its final name is whole; a run that fails leaves a manifest with
``status: failed``, the error and the tick, and no tables.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from tqdm import tqdm

from abm.model import RareEarthModel
from abm.scenario import Scenario, load_scenario
from abm.world import month_index

PACKAGES = ("mesa", "numpy", "pandas", "networkx", "pyarrow", "pydantic", "matplotlib")
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    """What a run produced: the metrics table, edge flows, and how it was made."""

    scenario: Scenario
    seed: int
    metrics: pd.DataFrame
    flows: pd.DataFrame
    model: RareEarthModel | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    def save(self, out_dir: str | Path = "runs", started: datetime | None = None) -> Path:
        """Write the run folder under ``out_dir`` and return its path."""
        return write_run(self, Path(out_dir), started or datetime.now(UTC))


def _dates(scenario: Scenario, ticks: pd.Index) -> list[str]:
    start = month_index(scenario.start)
    months = (ticks.to_numpy() * 12) // scenario.ticks_per_year + start
    return [f"{m // 12:04d}-{m % 12 + 1:02d}" for m in months]


def run(
    scenario: Scenario | str | Path | None = None,
    seed: int = 0,
    ticks: int | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    progress: bool = False,
    keep_model: bool = True,
) -> Result:
    """Build a :class:`RareEarthModel` and run it.

    Args:
        scenario: scenario or path (default: the baseline).
        seed: seed of the model's random generator.
        ticks: number of ticks (default: the scenario's ``ticks``).
        overrides: dotted-path overrides (``["market.logit_beta=12"]`` or a mapping).
        progress: show a progress bar.
        keep_model: keep the final model on the result (for network analysis).

    Returns:
        The :class:`Result`, with metrics indexed by tick and a ``date`` column.

    """
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario or REPO / "configs" / "baseline.yaml", overrides)
    elif overrides:
        raise ValueError("overrides apply to a scenario path, not to a loaded Scenario")
    t0 = time.perf_counter()
    model = RareEarthModel(scenario, rng=seed)
    t1 = time.perf_counter()
    n = scenario.ticks if ticks is None else ticks
    for _ in tqdm(range(n), desc=scenario.name, unit="tick", disable=not progress, leave=False):
        model.step()
    t2 = time.perf_counter()
    frame = model.datacollector.get_model_vars_dataframe().reset_index(drop=True)
    frame.index = pd.RangeIndex(len(frame), name="tick")
    frame.insert(0, "date", _dates(scenario, frame.index))
    return Result(
        scenario=scenario,
        seed=seed,
        metrics=frame,
        flows=model.flows_frame(),
        model=model if keep_model else None,
        timings_s={"setup": t1 - t0, "simulation": t2 - t1},
    )


# ------------------------------------------------------------------ run folders


def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the code's repository (``None`` outside a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def environment() -> dict[str, Any]:
    """Python and package versions."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }


def new_run_dir(out_dir: Path, scenario_name: str, started: datetime) -> tuple[Path, Path]:
    """Final and temporary paths of a new run folder (the final one does not exist yet)."""
    stamp = started.strftime("%Y%m%d-%H%M%S")
    final = out_dir / f"{stamp}_{scenario_name}"
    suffix = 1
    while final.exists():
        suffix += 1
        final = out_dir / f"{stamp}_{scenario_name}-{suffix}"
    tmp = out_dir / f".tmp-{final.name}-{os.getpid()}"
    return final, tmp


def manifest(
    scenario: Scenario, seed: int, ticks: int, started: datetime, status: str, **extra: Any
) -> dict[str, Any]:
    """The manifest of a run."""
    return {
        "scenario": scenario.name,
        "seed": seed,
        "ticks": ticks,
        "status": status,
        "started": started.isoformat(),
        "ended": datetime.now(UTC).isoformat(),
        "git": git_state(),
        "environment": environment(),
        "config": scenario.model_dump(mode="json"),
        **extra,
    }


def write_run(result: Result, out_dir: Path, started: datetime) -> Path:
    """Write a finished run's folder atomically (temporary folder, then rename)."""
    from abm.plots import summary_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    final, tmp = new_run_dir(out_dir, result.scenario.name, started)
    tmp.mkdir()
    try:
        (tmp / "config.yaml").write_text(
            yaml.safe_dump(result.scenario.model_dump(mode="json"), sort_keys=False)
        )
        result.metrics.to_parquet(tmp / "metrics.parquet")
        result.flows.to_parquet(tmp / "flows.parquet", index=False)
        figure = summary_figure(result)
        figure.savefig(tmp / "summary.png", dpi=110)
        figure.clf()
        ticks = len(result.metrics) - 1
        info = manifest(
            result.scenario,
            result.seed,
            ticks,
            started,
            "complete",
            timings_s=result.timings_s,
            files=[*sorted(p.name for p in tmp.iterdir()), "manifest.json"],
        )
        (tmp / "manifest.json").write_text(json.dumps(info, indent=2))
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def write_failed_run(
    scenario: Scenario, seed: int, out_dir: Path, started: datetime, error: BaseException, tick: int
) -> Path:
    """Record a run that failed: a folder holding only a manifest with the error."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final, tmp = new_run_dir(out_dir, scenario.name, started)
    tmp.mkdir()
    info = manifest(
        scenario,
        seed,
        tick,
        started,
        "failed",
        error=f"{type(error).__name__}: {error}",
        failed_at_tick=tick,
    )
    (tmp / "manifest.json").write_text(json.dumps(info, indent=2))
    tmp.rename(final)
    return final
