"""Sweep throughput (issue #4, item 4): runs per minute on the baseline, three ways.

One grid — the alliance tariff × the NdPr price floor, two values each, a few replicates, the
full 240 ticks — run by

- ``abm.sweeps.sweep`` on a Dask ``LocalCluster`` of 1 and of 2 worker processes (the
  project's sweep engine: Parquet tables, seeds per run; analysis off), and
- ``mesa.batch_run`` with 1 and 2 processes on the same grid and replicates.

Wall time covers the whole call, cluster start-up included, as a user meets it. The grid is
sized so that start-up is a small part of it, as in a study of hundreds or thousands of runs:
a sweep spends about 2.4 s outside its runs whatever its size (starting the cluster, each
worker's imports, the tables, closing), which was 10–17 % of a 16-run grid once a run took
1.3 s, and is 3–6 % of this 48-run one. That time is reported beside each sweep
(``outside_runs_s``: wall time less the runs' own seconds shared among the workers). Runs go
to a temporary folder.

Dask's sweeps run in the order 2, 1, 2 workers (:data:`DASK_ORDER`), and the 2-worker figure
is the mean of the two around the 1-worker one: this virtual machine's speed drifts over
minutes, and a ratio of two sweeps run one after the other takes the drift for a speed-up (or
a loss); bracketing cancels a steady drift and halves the weight of a slow minute.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
GRID = {"tariff_rate": [0.0, 0.25], "floor_level_usd_per_kg": [0, 110]}
REPLICATES = 12
TICKS = 240
DASK_ORDER = (2, 1, 2)  # workers of each Dask sweep, in the order they run


def _sweep_file(folder: Path) -> Path:
    spec = {
        "name": "benchmark_grid",
        "description": "Benchmark grid (issue #4): tariff x floor on the baseline.",
        "scenario": str(REPO / "configs" / "baseline.yaml"),
        "seed": 4,
        "replicates": REPLICATES,
        "ticks": TICKS,
        "design": "grid",
        "parameters": {name: {"values": values} for name, values in GRID.items()},
    }
    path = folder / "benchmark_grid.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _abm_sweep(workers: int) -> tuple[float, int, float]:
    """Wall seconds of the sweep, its runs that finished ``ok``, and its seconds outside runs.

    Seconds outside runs: the wall time less the runs' own seconds shared among the workers.
    """
    from abm.sweeps import sweep

    with tempfile.TemporaryDirectory() as tmp:
        path = _sweep_file(Path(tmp))
        start = time.perf_counter()
        done = sweep(path, workers=workers, out=Path(tmp) / "runs", progress=False, analyze=False)
        wall = time.perf_counter() - start
        runs = done.experiments
        outside = wall - runs["seconds"].sum() / workers
        return wall, int((runs["status"] == "ok").sum()), outside


def _batch_run(processes: int) -> tuple[float, int, None]:
    """Wall seconds of ``mesa.batch_run`` on the grid, and how many runs it returned.

    It does not time its runs, so its seconds outside them are not known (None).
    """
    import mesa

    from abm.model import RareEarthModel

    start = time.perf_counter()
    rows = mesa.batch_run(
        RareEarthModel,
        parameters=GRID,
        number_processes=processes,
        rng=list(range(REPLICATES)),
        max_steps=TICKS,
        data_collection_period=-1,
        display_progress=False,
    )
    return time.perf_counter() - start, len({row["RunId"] for row in rows}), None


def sweep_throughput() -> dict[str, Any]:
    """Runs per minute of each engine with 1 and 2 workers; the 2-vs-1 ratio of Dask's.

    The ratio's 2-worker figure is the mean of the 2-worker sweeps (:data:`DASK_ORDER`).
    """
    try:
        import abm.sweeps  # noqa: F401
    except ImportError as err:  # the sweep engine (issue 2) is not there yet
        return {"error": f"abm.sweeps not available ({err})"}
    runs = REPLICATES
    for values in GRID.values():
        runs *= len(values)
    engines = []
    plan = [("abm.sweeps (Dask)", _abm_sweep, w) for w in DASK_ORDER]
    plan += [("mesa.batch_run", _batch_run, w) for w in (1, 2)]
    for engine, measure, workers in plan:
        wall, finished, outside = measure(workers)
        if finished != runs:  # a sweep that lost runs is not faster, it is broken
            return {"error": f"{engine} with {workers} workers finished {finished}/{runs} runs"}
        engines.append(
            {
                "engine": engine,
                "workers": workers,
                "wall_s": wall,
                "runs_per_min": 60 * runs / wall,
                "outside_runs_s": outside,
            }
        )
    return {"runs": runs, "ticks": TICKS, "engines": engines, "dask_speedup": dask_speedup(engines)}


def dask_speedup(engines: list[dict[str, Any]]) -> float:
    """Dask's runs per minute on 2 workers over 1 (each the mean of its sweeps)."""
    per = {
        workers: [
            e["runs_per_min"]
            for e in engines
            if e["engine"].startswith("abm") and e["workers"] == workers
        ]
        for workers in (1, 2)
    }
    return statistics.fmean(per[2]) / statistics.fmean(per[1])
