"""Running a model and writing run folders: ``run()``, :class:`Result`, manifests, Parquet.

A run folder ``runs/<timestamp>_<scenario>/`` holds ``manifest.json`` (resolved config, seed,
git commit and dirty flag, Python and package versions, start and end time, status),
``config.yaml``, ``metrics.parquet`` (one row per tick), ``flows.parquet`` (edge flows) and
``summary.png``. It is written to a hidden temporary folder and renamed when complete, so a
folder that exists under its final name is whole; a run that fails leaves a folder holding a
manifest with ``status: failed``, the error and the tick it failed at, and the metrics up to
then as ``metrics.partial.parquet`` — never a table under a complete run's file name.

:func:`run` reports a failure as :class:`RunFailed` (the tick, the partial metrics, the error
as its cause) and Ctrl-C as :class:`RunInterrupted` (a ``KeyboardInterrupt`` with the tick).
"""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import shutil
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from tqdm import tqdm

from abm.model import RareEarthModel
from abm.scenario import NAME, Scenario, ScenarioError, load_scenario
from abm.world import month_index

PACKAGES = ("mesa", "numpy", "pandas", "networkx", "pyarrow", "pydantic", "matplotlib")
REPO = Path(__file__).resolve().parent.parent


class RunFailed(RuntimeError):
    """A run stopped by an error: the tick it failed at and the metrics collected until then.

    The original exception is the ``__cause__``. ``tick`` is ``None`` when the model failed
    while it was being built (before or during warm-up).
    """

    def __init__(
        self, scenario: Scenario, seed: int, tick: int | None, error: BaseException, metrics: Any
    ) -> None:
        self.scenario, self.seed, self.tick, self.error = scenario, seed, tick, error
        self.metrics: pd.DataFrame | None = metrics
        when = "while building the model" if tick is None else f"at tick {tick}"
        super().__init__(
            f"run of '{scenario.name}' (seed {seed}) failed {when}: {type(error).__name__}: {error}"
        )


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM in the CLI) during a run; ``tick`` is the last tick completed."""

    def __init__(self, tick: int | None, ticks: int) -> None:
        self.tick, self.ticks = tick, ticks
        when = "while building the model" if tick is None else f"at tick {tick} of {ticks}"
        super().__init__(f"interrupted {when}")


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
    n = scenario.ticks if ticks is None else ticks
    t0 = time.perf_counter()
    model = None
    try:
        model = RareEarthModel(scenario, rng=seed)
        t1 = time.perf_counter()
        for _ in tqdm(range(n), desc=scenario.name, unit="tick", disable=not progress, leave=False):
            model.step()
    except KeyboardInterrupt:
        raise RunInterrupted(None if model is None else model.tick, n) from None
    except Exception as err:
        tick = getattr(err, "tick", None if model is None else model.tick)
        partial = None if model is None else metrics_frame(model)
        raise RunFailed(scenario, seed, tick, err, partial) from err
    t2 = time.perf_counter()
    frame = metrics_frame(model)
    return Result(
        scenario=scenario,
        seed=seed,
        metrics=frame,
        flows=model.flows_frame(),
        model=model if keep_model else None,
        timings_s={"setup": t1 - t0, "simulation": t2 - t1},
    )


def metrics_frame(model: RareEarthModel) -> pd.DataFrame:
    """The metrics a model has collected: one row per tick, indexed by tick, with a date."""
    frame = model.datacollector.get_model_vars_dataframe().reset_index(drop=True)
    frame.index = pd.RangeIndex(len(frame), name="tick")
    frame.insert(0, "date", _dates(model.config, frame.index))
    return frame


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
    """Final and temporary paths of a new run folder (the final one does not exist yet).

    Raises:
        ScenarioError: if the name could reach outside ``out_dir`` (it is validated when a
            scenario is loaded; this guards scenarios changed in code).

    """
    if not re.fullmatch(NAME, scenario_name) or scenario_name in (".", ".."):
        raise ScenarioError("name", scenario_name, "not a safe run folder name")
    stamp = started.strftime("%Y%m%d-%H%M%S")
    final = out_dir / f"{stamp}_{scenario_name}"
    suffix = 1
    while final.exists():
        suffix += 1
        final = out_dir / f"{stamp}_{scenario_name}-{suffix}"
    tmp = out_dir / f".tmp-{final.name}-{os.getpid()}"
    return final, tmp


def _publish(tmp: Path, final: Path) -> Path:
    """Rename a finished temporary folder to its final name; never onto an existing folder.

    Two processes that started in the same second may have chosen the same name: the second
    takes the next free suffix instead of losing its run.
    """
    base, suffix = final.name, 1
    while True:
        if not final.exists():
            try:
                tmp.rename(final)
                return final
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        suffix += 1
        final = final.with_name(f"{base}-{suffix}")


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
        "config": scenario.model_dump(mode="json", by_alias=True),
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
            yaml.safe_dump(result.scenario.model_dump(mode="json", by_alias=True), sort_keys=False)
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
        return _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_failed_run(
    scenario: Scenario,
    seed: int,
    out_dir: Path,
    started: datetime,
    error: BaseException,
    tick: int | None,
    metrics: pd.DataFrame | None = None,
    ticks: int | None = None,
) -> Path:
    """Record a run that failed, atomically like a finished one.

    The folder holds ``manifest.json`` (``status: failed``, the error, its traceback and
    ``failed_at_tick``), ``config.yaml`` to reproduce it, and the metrics collected until the
    failure as ``metrics.partial.parquet`` — no file a complete run would have, so nothing in it
    can be mistaken for a finished table.

    Args:
        scenario: the scenario that was run.
        seed: its seed.
        out_dir: the output folder.
        started: when the run started.
        error: what stopped it (for a :class:`RunFailed`, pass its ``error``).
        tick: the tick it failed at (``None``: while the model was being built).
        metrics: metrics collected before the failure.
        ticks: ticks requested (default: the scenario's).

    Returns:
        The run folder.

    """
    out_dir.mkdir(parents=True, exist_ok=True)
    final, tmp = new_run_dir(out_dir, scenario.name, started)
    tmp.mkdir()
    try:
        (tmp / "config.yaml").write_text(
            yaml.safe_dump(scenario.model_dump(mode="json", by_alias=True), sort_keys=False)
        )
        if metrics is not None and len(metrics):
            metrics.to_parquet(tmp / "metrics.partial.parquet")
        info = manifest(
            scenario,
            seed,
            scenario.ticks if ticks is None else ticks,
            started,
            "failed",
            error=f"{type(error).__name__}: {error}",
            failed_at_tick=tick,
            traceback=traceback.format_exception(error),
            files=[*sorted(p.name for p in tmp.iterdir()), "manifest.json"],
        )
        (tmp / "manifest.json").write_text(json.dumps(info, indent=2, default=str))
        return _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
