"""Experiments at scale: sweep files, designs, seeds, and running them on a Dask cluster.

A sweep file (``configs/sweeps/*.yaml``) names a base scenario, the parameters to vary (flat
levers of :mod:`abm.levers` or dotted paths into the scenario) with values or ranges, a design
(``grid``, ``lhs``, ``sobol``, ``morris`` — the last three through SALib), replicates, ticks,
outcomes (:data:`abm.analysis.OUTCOMES`) and the metrics to keep per tick. :func:`load_sweep_file`
validates it at the boundary, once, with one-line scenario errors.

Every run has a seed of its own from ``numpy.random.SeedSequence(seed).spawn(n)``, stored in the
experiments table with the ``abm run`` command that repeats the run alone. Runs execute on
Dask (:func:`abm.sweeps.sweep`); this module holds what a worker runs (:func:`run_batch`) and
the EMA Workbench adapter (:func:`ema_model`).
"""

from __future__ import annotations

import copy
import itertools
import os
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import Field, ValidationError

from abm.analysis import OUTCOMES, Outcome, salib_problem, summarise
from abm.levers import LEVERS, apply_overrides, scenario_data
from abm.scenario import Scenario, ScenarioError, _read_yaml, _Strict, _validation_error
from abm.world import month_index

DESIGNS = ("grid", "lhs", "sobol", "morris")
CATEGORICAL = tuple(name for name, lever in LEVERS.items() if lever.kind != "float")
CRASH_ENV = "ABM_TEST_CRASH_ONCE"  # tests only: "<sweep>:<run id>:<marker file>", see _crash_hook


class ParameterRange(_Strict):
    """Values of a grid parameter, or the range of a sampled one."""

    values: list[Any] | None = Field(None, min_length=1, description="grid values")
    low: float | None = Field(None, description="lhs, sobol, morris: lower bound")
    high: float | None = Field(None, description="lhs, sobol, morris: upper bound")


class CustomOutcome(_Strict):
    """An outcome defined in the sweep file: a statistic of a metric (or a sum of metrics)."""

    metric: str | list[str]
    stat: Literal["mean", "max", "min", "sum", "last"]
    last_years: float | None = Field(None, gt=0, description="only the last N years")


class SweepSpec(_Strict):
    """A sweep file."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str = ""
    scenario: str = Field(description="base scenario file, relative to the sweep file")
    ticks: int | None = Field(None, ge=1, le=100_000, description="default: the scenario's")
    seed: int = Field(0, ge=0, description="root seed of every run's seed")
    replicates: int = Field(1, ge=1, le=100_000)
    common_seeds: bool = Field(False, description="same seeds at every point (CRN)")
    design: Literal["grid", "lhs", "sobol", "morris"] = "grid"
    samples: int | None = Field(None, ge=1, le=1_000_000, description="lhs/sobol/morris N")
    morris_levels: int = Field(4, ge=2, le=100)
    set: dict[str, Any] = Field(default_factory=dict, description="fixed overrides")
    parameters: dict[str, ParameterRange] = Field(min_length=1)
    outcomes: list[str | dict[str, CustomOutcome]] | None = None
    metrics: list[str] | Literal["all"] | None = None
    metrics_every: int = Field(1, ge=1, description="keep every k-th tick of the metrics")
    batch_size: int = Field(1, ge=1, le=10_000, description="runs per Dask task")


@dataclass
class Sweep:
    """A validated sweep: its spec, base scenario data and the table of runs."""

    spec: SweepSpec
    source: Path
    scenario_path: Path
    base: dict[str, Any]  # the base scenario's raw data, ``extends:`` resolved
    runs: pd.DataFrame  # run_id, point, replicate, seed and one column per parameter
    outcomes: dict[str, Outcome]
    metrics: list[str]
    ticks: int

    @property
    def parameters(self) -> list[str]:
        """Names of the varied parameters."""
        return list(self.spec.parameters)

    def overrides(self, run: Mapping[str, Any]) -> dict[str, Any]:
        """The fixed ``set:`` and this run's parameter values, as overrides."""
        return {**self.spec.set, **{name: _native(run[name]) for name in self.parameters}}

    def command(self, run: Mapping[str, Any]) -> str:
        """The ``abm run`` command that repeats one run of the sweep alone."""
        path = self.scenario_path
        shown = os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
        parts = ["abm", "run", shown, "--seed", str(int(run["seed"])), "--ticks", str(self.ticks)]
        for key, value in self.overrides(run).items():
            parts += ["--set", f"{key}={yaml_text(value)}"]
        return shlex.join(parts)


def yaml_text(value: Any) -> str:
    """A value as YAML flow text that ``--set`` parses back to the same value."""
    text = yaml.safe_dump(_native(value), default_flow_style=True, width=2**30)
    return text.removesuffix("\n...\n").strip()


def _native(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_native(v) for v in value]
    return value


# ------------------------------------------------------------------ designs and seeds


def design_points(
    parameters: Mapping[str, ParameterRange],
    design: str,
    samples: int | None = None,
    seed: int = 0,
    morris_levels: int = 4,
) -> pd.DataFrame:
    """The design: one row per point, one column per parameter, in run order.

    ``grid`` is the full factorial of the values (the last parameter varies fastest); ``lhs``
    draws ``samples`` Latin-hypercube points; ``sobol`` is SALib's Sobol'/Saltelli design
    without second-order terms, ``samples × (D + 2)`` points; ``morris`` is ``samples``
    trajectories of ``D + 1`` points on ``morris_levels`` levels.
    """
    names = list(parameters)
    if design == "grid":
        rows = itertools.product(*(parameters[n].values or [] for n in names))
        return pd.DataFrame([list(row) for row in rows], columns=names, dtype=object)
    from SALib.sample import latin, morris, sobol

    problem = salib_problem({n: (p.low, p.high) for n, p in parameters.items()})
    if design == "lhs":
        matrix = latin.sample(problem, samples, seed=seed)
    elif design == "sobol":
        matrix = sobol.sample(problem, samples, calc_second_order=False, seed=seed)
    elif design == "morris":
        matrix = morris.sample(problem, samples, num_levels=morris_levels, seed=seed)
    else:
        raise ValueError(f"unknown design {design!r} (known: {', '.join(DESIGNS)})")
    return pd.DataFrame(matrix, columns=names)


def run_seeds(root: int, n: int) -> np.ndarray:
    """``n`` seeds from ``SeedSequence(root).spawn(n)``, each an int ``abm run --seed`` takes."""
    children = np.random.SeedSequence(root).spawn(n)
    return np.array([int(c.generate_state(1, dtype=np.uint32)[0]) for c in children], np.int64)


def runs_table(spec: SweepSpec, design: pd.DataFrame) -> pd.DataFrame:
    """One row per run: run id, point, replicate, seed and the point's parameter values."""
    n_points, reps = len(design), spec.replicates
    point = np.repeat(np.arange(n_points), reps)
    replicate = np.tile(np.arange(reps), n_points)
    seeds = run_seeds(spec.seed, reps if spec.common_seeds else n_points * reps)
    table = pd.DataFrame(
        {
            "run_id": np.arange(n_points * reps),
            "point": point,
            "replicate": replicate,
            "seed": seeds[replicate] if spec.common_seeds else seeds,
        }
    )
    values = design.iloc[point].reset_index(drop=True)
    return pd.concat([table, values], axis=1)


# ------------------------------------------------------------------ loading a sweep file


def _fail(key: str, value: Any, problem: str, source: Path) -> ScenarioError:
    return ScenarioError(key, value, problem, str(source))


def _check_design(spec: SweepSpec, source: Path) -> None:
    for name, p in spec.parameters.items():
        where = f"parameters.{name}"
        if name in spec.set:
            raise _fail(where, name, "also fixed in set:", source)
        if spec.design == "grid":
            if p.values is None or p.low is not None or p.high is not None:
                raise _fail(
                    where,
                    p.model_dump(exclude_none=True),
                    "a grid parameter needs values: [...]",
                    source,
                )
            continue
        if p.values is not None or p.low is None or p.high is None:
            raise _fail(
                where,
                p.model_dump(exclude_none=True),
                f"a {spec.design} parameter needs low, high",
                source,
            )
        if not p.low < p.high:
            raise _fail(f"{where}.high", p.high, "must be above low", source)
        if name in CATEGORICAL:
            raise _fail(where, name, "a categorical lever can only be on a grid", source)
    if spec.design != "grid" and spec.samples is None:
        raise _fail("samples", None, f"a {spec.design} design needs samples: N", source)
    if spec.design == "sobol" and spec.samples & (spec.samples - 1):  # type: ignore[operator]
        raise _fail("samples", spec.samples, "a Sobol design needs a power of 2", source)


def _check_values(spec: SweepSpec, base: dict[str, Any], source: Path) -> Any:
    """Check each parameter value (grid) or bound alone, then the first point.

    Returns:
        The scenario of the first design point.

    """
    for name, p in spec.parameters.items():
        checks = (
            [(f"values.{i}", v) for i, v in enumerate(p.values or [])]
            if spec.design == "grid"
            else [("low", p.low), ("high", p.high)]
        )
        for where, value in checks:
            try:
                apply_overrides(copy.deepcopy(base), {**spec.set, name: value})
            except ScenarioError as err:
                raise _fail(
                    f"parameters.{name}.{where}", value, f"{err.key}: {err.problem}", source
                ) from None
    first = {n: (p.values[0] if p.values else p.low) for n, p in spec.parameters.items()}
    try:
        return apply_overrides(copy.deepcopy(base), {**spec.set, **first})
    except ScenarioError as err:
        raise _fail("parameters", first, f"first point: {err.key}: {err.problem}", source) from None


def _outcomes(spec: SweepSpec, known: set[str], source: Path) -> dict[str, Outcome]:
    if spec.outcomes is None:  # the catalogue, as far as this scenario has the metrics
        return {n: o for n, o in OUTCOMES.items() if set(o.metrics) <= known}
    chosen: dict[str, Outcome] = {}
    for i, item in enumerate(spec.outcomes):
        if isinstance(item, str):
            if item not in OUTCOMES:
                raise _fail(
                    f"outcomes.{i}", item, f"unknown (known: {', '.join(OUTCOMES)})", source
                )
            chosen[item] = OUTCOMES[item]
            continue
        for name, custom in item.items():
            metrics = (custom.metric,) if isinstance(custom.metric, str) else tuple(custom.metric)
            chosen[name] = Outcome(metrics, custom.stat, custom.last_years)
    for i, (name, outcome) in enumerate(chosen.items()):
        missing = [m for m in outcome.metrics if m not in known]
        if missing:
            raise _fail(f"outcomes.{i}", name, f"no metric {missing[0]} in this scenario", source)
    return chosen


def load_sweep_file(path: str | Path) -> Sweep:
    """Read and validate a sweep file (and its scenario, parameters, outcomes, metrics).

    Raises:
        ScenarioError: one line naming the file, the key and the value.

    """
    from abm.metrics import registry
    from abm.model import RareEarthModel

    source = Path(path)
    try:
        spec = SweepSpec.model_validate(_read_yaml(source))
    except ValidationError as err:
        raise _validation_error(err, str(source)) from None
    except ScenarioError as err:  # the file is missing, too large or not YAML
        raise ScenarioError(err.key, err.value, err.problem.replace("scenario", "sweep")) from None
    scenario_path = (source.parent / spec.scenario).resolve()
    if not scenario_path.is_file():
        raise _fail("scenario", spec.scenario, "no such scenario file", source)
    base = scenario_data(scenario_path)
    _check_design(spec, source)
    first = _check_values(spec, base, source)
    known = {m.name for m in registry(RareEarthModel(first, rng=0))}
    outcomes = _outcomes(spec, known, source)
    if spec.metrics == "all":
        metrics = sorted(known)
    elif spec.metrics is None:
        metrics = sorted({m for o in outcomes.values() for m in o.metrics})
    else:
        metrics = list(spec.metrics)
        for i, name in enumerate(metrics):
            if name not in known:
                raise _fail(f"metrics.{i}", name, "no such metric in this scenario", source)
    design = design_points(
        spec.parameters, spec.design, spec.samples, spec.seed, spec.morris_levels
    )
    return Sweep(
        spec=spec,
        source=source,
        scenario_path=scenario_path,
        base=base,
        runs=runs_table(spec, design),
        outcomes=outcomes,
        metrics=metrics,
        ticks=spec.ticks or first.ticks,
    )


# ------------------------------------------------------------------ what a worker runs


@dataclass(frozen=True)
class Job:
    """What every run of a sweep shares (sent with each task)."""

    name: str
    base: dict[str, Any]
    source: str
    ticks: int
    outcomes: dict[str, Outcome]
    metrics: list[str]
    metrics_every: int = 1


@dataclass
class RunRecord:
    """One finished run: status, outcomes, kept metrics (None if it failed)."""

    run_id: int
    status: str  # "ok" or "failed" (the model raised); "lost" is set by the parent
    seconds: float
    outcomes: dict[str, float] = field(default_factory=dict)
    error: str = ""
    metrics: pd.DataFrame | None = None


def simulate(
    base: Mapping[str, Any],
    overrides: Mapping[str, Any],
    seed: int,
    ticks: int | None = None,
    source: str | None = None,
) -> tuple[pd.DataFrame, Scenario]:
    """Run one model exactly as ``abm run`` does; returns its metrics and its scenario."""
    from abm.model import RareEarthModel

    scenario = apply_overrides(copy.deepcopy(dict(base)), dict(overrides), source)
    model = RareEarthModel(scenario, rng=seed)
    for _ in range(scenario.ticks if ticks is None else ticks):
        model.step()
    frame = model.datacollector.get_model_vars_dataframe().reset_index(drop=True)
    return frame, scenario


def _dates(scenario: Scenario, ticks: np.ndarray) -> list[str]:
    months = month_index(scenario.start) + (ticks * 12) // scenario.ticks_per_year
    return [f"{m // 12:04d}-{m % 12 + 1:02d}" for m in months]


def _crash_hook(job: Job, run_id: int) -> None:
    """Tests only: kill this Dask worker process once, to test recovery from a dead worker.

    Acts only inside a Dask worker, when ``ABM_TEST_CRASH_ONCE`` names this sweep and run and
    its marker file does not exist yet (it is created first, so it fires once).
    """
    hook = os.environ.get(CRASH_ENV)
    if not hook:
        return
    sweep_name, run, marker = hook.split(":", 2)
    if sweep_name != job.name or int(run) != run_id or os.path.exists(marker):
        return
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return
    Path(marker).touch()
    os._exit(1)


def run_batch(job: Job, runs: Sequence[tuple[int, int, dict[str, Any]]]) -> list[RunRecord]:
    """Run a few runs of a sweep (one Dask task): ``(run id, seed, overrides)`` each.

    A run that raises is recorded as failed with its error; the others go on.
    """
    records = []
    for run_id, seed, overrides in runs:
        _crash_hook(job, run_id)
        started = time.perf_counter()
        try:
            frame, scenario = simulate(job.base, overrides, seed, job.ticks, job.source)
            outcomes = summarise(frame, job.outcomes, scenario.ticks_per_year)
            keep = (frame.index % job.metrics_every == 0) | (frame.index == frame.index[-1])
            kept = frame.loc[keep, job.metrics].rename_axis("tick").reset_index()
            kept.insert(0, "run_id", run_id)
            kept.insert(2, "date", _dates(scenario, kept["tick"].to_numpy()))
            records.append(
                RunRecord(run_id, "ok", time.perf_counter() - started, outcomes, metrics=kept)
            )
        except Exception as err:  # a failed run is recorded and the sweep goes on
            error = " ".join(f"{type(err).__name__}: {err}".split())[:500]
            records.append(RunRecord(run_id, "failed", time.perf_counter() - started, error=error))
    return records


# ------------------------------------------------------------------ EMA Workbench adapter


@dataclass(frozen=True)
class EmaFunction:
    """A picklable model function for EMA Workbench: parameters in, outcomes out."""

    base: dict[str, Any]
    source: str
    ticks: int | None
    outcomes: dict[str, Outcome]
    fixed: dict[str, Any] = field(default_factory=dict)

    def __call__(self, seed: int = 0, **parameters: Any) -> dict[str, float]:
        """Run once with levers/dotted paths as keyword arguments; returns every outcome."""
        overrides = {**self.fixed, **parameters}
        frame, scenario = simulate(self.base, overrides, int(seed), self.ticks, self.source)
        return summarise(frame, self.outcomes, scenario.ticks_per_year)


def ema_model(
    uncertainties: Mapping[str, tuple[float, float] | Sequence[Any]],
    levers: Mapping[str, tuple[float, float] | Sequence[Any]] | None = None,
    outcomes: Sequence[str] | None = None,
    scenario: str | Path | None = None,
    ticks: int | None = None,
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    name: str = "abm",
) -> Any:
    """An EMA Workbench ``Model`` of the rare-earth model (needs the ``ema`` extra).

    Args:
        uncertainties: lever or dotted-path name → ``(low, high)`` (real) or a list of
            choices (categorical).
        levers: the same for EMA's policy levers.
        outcomes: names from :data:`abm.analysis.OUTCOMES` (default: all of them).
        scenario: base scenario file (default: the baseline).
        ticks: ticks per run (default: the scenario's).
        seed: seed of every run (a ``Constant``; use a ``ReplicatorModel`` for more).
        overrides: fixed dotted paths or levers applied to every run.
        name: the model's name (alphanumeric).

    Returns:
        An ``ema_workbench.Model`` ready for ``perform_experiments``.

    """
    from ema_workbench import CategoricalParameter, Constant, Model, RealParameter, ScalarOutcome

    from abm.model import DEFAULT_SCENARIO

    path = Path(scenario) if scenario is not None else DEFAULT_SCENARIO
    chosen = {n: OUTCOMES[n] for n in (outcomes or OUTCOMES)}

    def parameter(key: str, spec: tuple[float, float] | Sequence[Any]) -> Any:
        if isinstance(spec, tuple) and len(spec) == 2 and key not in CATEGORICAL:
            return RealParameter(key, float(spec[0]), float(spec[1]))
        return CategoricalParameter(key, list(spec))

    function = EmaFunction(scenario_data(path), str(path), ticks, chosen, dict(overrides or {}))
    model = Model(name, function=function)
    model.uncertainties = [parameter(k, v) for k, v in uncertainties.items()]
    model.levers = [parameter(k, v) for k, v in (levers or {}).items()]
    model.constants = [Constant("seed", seed)]
    model.outcomes = [ScalarOutcome(n) for n in chosen]
    return model
