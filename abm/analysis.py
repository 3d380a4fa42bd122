"""Outcomes of runs and the analysis of sweeps: replicate bands, Sobol and Morris tables.

An *outcome* is a scalar summary of one run's metrics (the mean of a metric over the last five
years, its peak, its total, its last value), defined once in :data:`OUTCOMES` from the metric
names of :mod:`abm.metrics`. Sweeps compute them on the workers; this module reads a sweep
folder back (:class:`SweepResults`), aggregates over replicates, computes sensitivity indices
through SALib, and writes the tables and figures of ``abm analyze``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

STATS = ("mean", "max", "min", "sum", "last")
QUANTILES = (0.05, 0.5, 0.95)


@dataclass(frozen=True)
class Outcome:
    """A scalar summary of a run: a statistic of one metric (or a sum of metrics) over ticks.

    Statistics run over the simulated ticks 1..T (tick 0 is the state after warm-up), or over
    the last ``last_years`` of them; NaN ticks (a price with no trade) are skipped.
    """

    metrics: tuple[str, ...]
    stat: str
    last_years: float | None = None
    doc: str = ""

    def value(self, frame: pd.DataFrame, ticks_per_year: int) -> float:
        """The outcome of one run from its metrics table (rows = ticks 0..T)."""
        series = frame[list(self.metrics)].sum(axis=1, min_count=len(self.metrics))
        series = series.iloc[1:] if len(series) > 1 else series
        if self.last_years is not None:
            series = series.iloc[-max(1, round(self.last_years * ticks_per_year)) :]
        if self.stat == "last":
            return float(series.iloc[-1])
        values = series.to_numpy(dtype=float)
        if np.isnan(values).all():
            return float("nan")
        reducer = {"mean": np.nanmean, "max": np.nanmax, "min": np.nanmin, "sum": np.nansum}
        return float(reducer[self.stat](values))


NON_CN_SEPARATION = ("capacity_separation_alliance", "capacity_separation_other")
OUTCOMES: dict[str, Outcome] = {
    "dependency_processed_cn_alliance_mean_last5y": Outcome(
        ("dependency_processed_cn_alliance",),
        "mean",
        5,
        "Share of alliance consumption processed in China, mean over the last 5 years.",
    ),
    "dependency_separated_cn_alliance_mean_last5y": Outcome(
        ("dependency_separated_cn_alliance",),
        "mean",
        5,
        "Share of alliance consumption separated in China, mean over the last 5 years.",
    ),
    "cn_share_separation_mean_last5y": Outcome(
        ("cn_share_separation",), "mean", 5, "China's share of world separation, last 5 years."
    ),
    "price_alliance_landed_magnet_max": Outcome(
        ("price_alliance_landed_magnet",), "max", None, "Peak alliance landed magnet price."
    ),
    "price_alliance_landed_magnet_mean": Outcome(
        ("price_alliance_landed_magnet",), "mean", None, "Mean alliance landed magnet price."
    ),
    "shortage_alliance_mean": Outcome(
        ("shortage_alliance",), "mean", None, "Mean unmet share of alliance end-use need."
    ),
    "shortage_alliance_max": Outcome(
        ("shortage_alliance",), "max", None, "Worst month's unmet share of alliance need."
    ),
    "floor_subsidy_usd_million_sum": Outcome(
        ("floor_subsidy_usd_million",), "sum", None, "Total price-floor subsidy paid, US$ M."
    ),
    "tariff_revenue_usd_million_sum": Outcome(
        ("tariff_revenue_usd_million",), "sum", None, "Total tariff revenue, US$ M."
    ),
    "strategic_pricing_usd_million_sum": Outcome(
        ("strategic_pricing_usd_million",), "sum", None, "China's total strategic-pricing spend."
    ),
    "buyers_landed_cost_usd_million_sum": Outcome(
        ("buyers_landed_cost_usd_million",), "sum", None, "What end buyers paid in total, US$ M."
    ),
    "capacity_separation_non_cn_last": Outcome(
        NON_CN_SEPARATION, "last", None, "Non-Chinese separation capacity at the end, t REO/yr."
    ),
}


def summarise(
    frame: pd.DataFrame, outcomes: Mapping[str, Outcome], ticks_per_year: int
) -> dict[str, float]:
    """Every outcome of one run, by name."""
    return {name: outcome.value(frame, ticks_per_year) for name, outcome in outcomes.items()}


# ------------------------------------------------------------------ reading a sweep


class SweepResults:
    """A sweep folder: the experiments table, outcomes, kept metrics, manifest and spec.

    Tables are read on first use. A sweep that has not finished (interrupted, or still
    running) is read from its part files; :attr:`complete` says which.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "manifest.json").is_file():
            raise FileNotFoundError(f"{self.path}: not a sweep folder (no manifest.json)")

    @cached_property
    def manifest(self) -> dict[str, Any]:
        """The sweep's manifest."""
        return json.loads((self.path / "manifest.json").read_text())

    @cached_property
    def spec(self) -> dict[str, Any]:
        """The sweep file as it was run (resolved)."""
        return yaml.safe_load((self.path / "sweep.yaml").read_text())

    @property
    def complete(self) -> bool:
        """Whether every run of the sweep has finished and the tables are final."""
        return self.manifest.get("status") == "complete"

    @property
    def parameters(self) -> list[str]:
        """Names of the varied parameters, in the sweep file's order."""
        return list(self.spec["parameters"])

    @property
    def outcome_names(self) -> list[str]:
        """Names of the outcomes."""
        return list(self.manifest["outcomes"])

    @cached_property
    def experiments(self) -> pd.DataFrame:
        """One row per run: run id, design point, replicate, seed, parameters, status."""
        return pd.read_parquet(self.path / "experiments.parquet")

    def _table(self, name: str) -> pd.DataFrame:
        final = self.path / f"{name}.parquet"
        if final.is_file():
            return pd.read_parquet(final)
        parts = sorted((self.path / "parts").glob(f"{name}-*.parquet"))
        if not parts:
            return pd.DataFrame(columns=["run_id"])
        frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        keys = ["run_id", "tick"] if "tick" in frame else ["run_id"]
        return frame.sort_values(keys).reset_index(drop=True)

    @cached_property
    def outcomes(self) -> pd.DataFrame:
        """One row per finished run: run id, status, error, seconds and every outcome."""
        return self._table("outcomes")

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """Kept metrics per run and tick (long over runs: run id, tick, metrics)."""
        return self._table("metrics")

    def table(self) -> pd.DataFrame:
        """Experiments joined with outcomes (finished runs only)."""
        ex = self.experiments.drop(columns=["status", "error", "seconds"], errors="ignore")
        return ex.merge(self.outcomes, on="run_id", how="inner")


def load_sweep(path: str | Path) -> SweepResults:
    """Open a sweep folder written by ``abm sweep``."""
    return SweepResults(path)


# ------------------------------------------------------------------ aggregation


def _qname(q: float) -> str:
    return f"q{round(q * 100):02d}"


def aggregate(
    table: pd.DataFrame,
    by: Sequence[str],
    values: Sequence[str],
    quantiles: Sequence[float] = QUANTILES,
) -> pd.DataFrame:
    """Mean, standard deviation and quantile bands of values over replicates.

    Args:
        table: one row per run (e.g. :meth:`SweepResults.table`, ok runs).
        by: the columns of a design point (parameters).
        values: outcome columns to summarise.
        quantiles: quantiles of the band.

    Returns:
        Tidy table: ``by`` columns, ``outcome``, ``n``, ``mean``, ``std`` and one column per
        quantile (``q05``, ``q50``, ``q95``).

    """
    long = table.melt(id_vars=list(by), value_vars=list(values), var_name="outcome")
    groups = long.groupby([*by, "outcome"], sort=True, dropna=False)["value"]
    result = groups.agg(n="count", mean="mean", std="std")
    for q in quantiles:
        result[_qname(q)] = groups.quantile(q)
    return result.reset_index()


def metric_bands(
    metrics: pd.DataFrame,
    metric: str,
    groups: pd.Series | None = None,
    quantiles: Sequence[float] = QUANTILES,
) -> pd.DataFrame:
    """Per tick: mean and quantile bands of one metric across runs (a fan chart's data).

    Args:
        metrics: the long metrics table (run id, tick, metrics).
        metric: which metric.
        groups: optional group label per run id (e.g. a parameter's value), one band each.
        quantiles: quantiles of the band.

    Returns:
        Columns ``group`` (if grouped), ``tick``, ``n``, ``mean`` and one per quantile.

    """
    frame = metrics[["run_id", "tick", metric]].rename(columns={metric: "value"})
    keys = ["tick"]
    if groups is not None:
        frame = frame.assign(group=frame["run_id"].map(groups))
        keys = ["group", "tick"]
    grouped = frame.groupby(keys, sort=True)["value"]
    result = grouped.agg(n="count", mean="mean")
    for q in quantiles:
        result[_qname(q)] = grouped.quantile(q)
    return result.reset_index()


# ------------------------------------------------------------------ sensitivity (SALib)


def salib_problem(bounds: Mapping[str, tuple[float, float]]) -> dict[str, Any]:
    """A SALib problem from parameter bounds ``{name: (low, high)}``."""
    return {
        "num_vars": len(bounds),
        "names": list(bounds),
        "bounds": [[float(lo), float(hi)] for lo, hi in bounds.values()],
    }


def _point_means(results: SweepResults, outcome: str) -> np.ndarray:
    """Outcome per design point (mean over replicates), in design order; NaN if missing."""
    table = results.experiments[["run_id", "point"]].merge(
        results.outcomes[["run_id", outcome]], on="run_id", how="left"
    )
    means = table.groupby("point", sort=True)[outcome].agg(lambda v: v.mean(skipna=False))
    return means.to_numpy(dtype=float)


def _complete_blocks(name: str, y: np.ndarray, size: int) -> np.ndarray:
    """Per block of ``size`` design rows (a Saltelli block, a Morris trajectory): all finite.

    A failed run (NaN) voids its block only; the others remain a valid, smaller sample.
    """
    blocks = y.reshape(-1, size)
    keep = np.isfinite(blocks).all(axis=1)
    if not keep.all():
        warnings.warn(
            f"{name}: {(~keep).sum()} of {len(keep)} design blocks have a NaN (a failed run "
            "or no data) and are left out",
            stacklevel=3,
        )
    return keep


def sobol_table(
    problem: Mapping[str, Any],
    outputs: Mapping[str, np.ndarray],
    num_resamples: int = 200,
    conf_level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """First-order and total Sobol indices with bootstrap confidence, per output.

    Args:
        problem: SALib problem (names and bounds) of the design.
        outputs: per output name, its values at the points of a Saltelli/Sobol design
            (``calc_second_order=False``: blocks of D + 2 points), in design order.
        num_resamples: bootstrap resamples for the confidence intervals.
        conf_level: confidence level of the intervals.
        seed: seed of the bootstrap.

    Returns:
        Columns ``outcome``, ``parameter``, ``S1``, ``S1_conf``, ``ST``, ``ST_conf``
        (``*_conf`` is the half-width of the interval) and ``N``, the blocks used: a block
        with a NaN is left out, with a warning; an output with fewer than 2 left, or the same
        in every run, is skipped.

    """
    from SALib.analyze import sobol

    rows = []
    for name, values in outputs.items():
        y = np.asarray(values, dtype=float)
        keep = _complete_blocks(name, y, problem["num_vars"] + 2)
        if keep.sum() < 2:
            continue
        if np.ptp(y.reshape(len(keep), -1)[keep]) == 0:
            warnings.warn(f"{name}: the same in every run; no Sobol indices", stacklevel=2)
            continue
        si = sobol.analyze(
            dict(problem),
            y.reshape(len(keep), -1)[keep].ravel(),
            calc_second_order=False,
            num_resamples=num_resamples,
            conf_level=conf_level,
            seed=seed,
        )
        for i, parameter in enumerate(problem["names"]):
            rows.append(
                {
                    "outcome": name,
                    "parameter": parameter,
                    "S1": si["S1"][i],
                    "S1_conf": si["S1_conf"][i],
                    "ST": si["ST"][i],
                    "ST_conf": si["ST_conf"][i],
                    "N": int(keep.sum()),
                }
            )
    columns = ["outcome", "parameter", "S1", "S1_conf", "ST", "ST_conf", "N"]
    return pd.DataFrame(rows, columns=columns)


def morris_table(
    problem: Mapping[str, Any],
    design: np.ndarray,
    outputs: Mapping[str, np.ndarray],
    num_levels: int = 4,
    conf_level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Morris elementary effects (μ, μ*, σ) with the confidence of μ*, per output.

    Args:
        problem: SALib problem of the design.
        design: the design matrix (points × parameters), in design order.
        outputs: per output name, its values at the design points.
        num_levels: the design's number of grid levels.
        conf_level: confidence level of μ*'s interval.
        seed: seed of the bootstrap.

    Returns:
        Columns ``outcome``, ``parameter``, ``mu``, ``mu_star``, ``mu_star_conf``, ``sigma``
        and ``N``, the trajectories used (one with a NaN is left out, with a warning).

    """
    from SALib.analyze import morris

    size = problem["num_vars"] + 1
    x = np.asarray(design, dtype=float).reshape(-1, size, problem["num_vars"])
    rows = []
    for name, values in outputs.items():
        y = np.asarray(values, dtype=float)
        keep = _complete_blocks(name, y, size)
        if keep.sum() < 2:
            continue
        si = morris.analyze(
            dict(problem),
            x[keep].reshape(-1, problem["num_vars"]),
            y.reshape(-1, size)[keep].ravel(),
            num_levels=num_levels,
            conf_level=conf_level,
            seed=seed,
        )
        for i, parameter in enumerate(problem["names"]):
            rows.append(
                {
                    "outcome": name,
                    "parameter": parameter,
                    "mu": si["mu"][i],
                    "mu_star": si["mu_star"][i],
                    "mu_star_conf": si["mu_star_conf"][i],
                    "sigma": si["sigma"][i],
                    "N": int(keep.sum()),
                }
            )
    columns = ["outcome", "parameter", "mu", "mu_star", "mu_star_conf", "sigma", "N"]
    return pd.DataFrame(rows, columns=columns)


def sensitivity(results: SweepResults) -> pd.DataFrame | None:
    """Sobol or Morris indices of every outcome of a sobol/morris sweep (None otherwise)."""
    spec = results.spec
    if spec["design"] not in ("sobol", "morris"):
        return None
    bounds = {name: (p["low"], p["high"]) for name, p in spec["parameters"].items()}
    problem = salib_problem(bounds)
    outputs = {name: _point_means(results, name) for name in results.outcome_names}
    if spec["design"] == "sobol":
        return sobol_table(problem, outputs, seed=spec["seed"])
    design = (
        results.experiments.drop_duplicates("point").sort_values("point")[list(bounds)].to_numpy()
    )
    return morris_table(problem, design, outputs, spec["morris_levels"], seed=spec["seed"])


# ------------------------------------------------------------------ abm analyze

MAX_FAN_GROUPS = 6  # a fan chart gets one band per value of the first parameter up to this


def analyze(path: str | Path) -> list[Path]:
    """Write a sweep's analysis tables and figures into ``<sweep>/analysis/``.

    Tables: ``outcomes_by_point.csv`` (mean, std, quantiles over replicates) and, for
    sobol/morris designs, ``sobol.csv`` or ``morris.csv``. Figures: ``heatmap.png`` (outcomes
    over the first two parameters of a grid), ``fan_<metric>.png`` (each kept metric across
    runs, one band per value of the first grid parameter) and ``sensitivity.png``.

    Returns:
        The files written.

    """
    from abm import plots

    results = SweepResults(path)
    dest = results.path / "analysis"
    dest.mkdir(exist_ok=True)
    written: list[Path] = []

    def save(figure: Any, name: str) -> None:
        figure.savefig(dest / name, dpi=110)
        written.append(dest / name)

    ok = results.table()
    ok = ok[ok["status"] == "ok"]
    params, names = results.parameters, results.outcome_names
    by_point = aggregate(ok, params, names)
    by_point.to_csv(dest / "outcomes_by_point.csv", index=False)
    written.append(dest / "outcomes_by_point.csv")
    grid = results.spec["design"] == "grid"
    if grid and len(params) >= 2 and len(ok):
        save(plots.sweep_heatmap(by_point, params[0], params[1], names), "heatmap.png")
    metrics = results.metrics
    groups = None
    if grid and ok[params[0]].nunique() <= MAX_FAN_GROUPS:
        groups = results.experiments.set_index("run_id")[params[0]].rename(params[0])
    for metric in results.manifest.get("metrics_kept", []):
        if metric in metrics and metrics[metric].notna().any():
            save(plots.sweep_fan_chart(metrics, metric, groups), f"fan_{metric}.png")
    indices = sensitivity(results)
    if indices is not None:
        name = f"{results.spec['design']}.csv"
        indices.to_csv(dest / name, index=False)
        written.append(dest / name)
        if len(indices):
            save(plots.sensitivity_bars(indices), "sensitivity.png")
    return written
