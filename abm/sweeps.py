"""Running a sweep on Dask: results streamed to a sweep folder, interruption and resume.

:func:`sweep` runs every run of a sweep file (:mod:`abm.experiments`) on a Dask cluster — an
embedded ``LocalCluster`` (processes, one thread each) by default, or an existing cluster given
by its scheduler address; the code path is the same. ``workers=0`` runs in this process
without Dask (for debugging). Results are written as runs finish, so the parent's memory stays
flat. A sweep folder ``runs/<timestamp>_<sweep>/`` holds:

- ``manifest.json``: status (``running``, ``interrupted``, ``incomplete``, ``complete``),
  counts, timings and runs per minute, git commit, package versions, outcome definitions;
- ``sweep.yaml`` (the sweep file) and ``scenario.yaml`` (the base scenario, resolved);
- ``experiments.parquet``: run id, point, replicate, seed, parameters, status, error, seconds
  and the ``abm run`` command that repeats the run alone;
- while running, ``parts/``; once every run has finished, ``outcomes.parquet`` (one row per
  run) and ``metrics.parquet`` (run id, tick, kept metrics), then ``analysis/``.

The final tables exist only when the sweep is complete. A run that raises is recorded as
``failed`` and the sweep goes on; a run whose worker died too often is ``lost`` and is retried
by ``--resume``, which also finishes an interrupted sweep without redoing finished runs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

from abm import threads
from abm.analysis import SweepResults
from abm.experiments import Job, RunRecord, Sweep, load_sweep_file, run_batch, yaml_text
from abm.runs import environment, git_state
from abm.scenario import ScenarioError

FLUSH_RUNS = 64  # write a part file after this many finished runs ...
FLUSH_SECONDS = 30.0  # ... or this many seconds
CHUNK_RUNS = 256  # runs per row group when the metrics parts are merged
# Dask's housekeeping in the embedded cluster's processes, turned down: the workers'
# statistical profiler samples the running task's stack every 10 ms and each event loop checks
# its own health every 20 ms, each time taking the GIL from the run. With no core to spare (as
# many workers as cores), runs on 2 workers took 1.34–1.69 s each with Dask's defaults against
# 1.23–1.27 s with these, on the 2-core development machine (one run alone: 1.20–1.23 s). Its
# dashboard, which shows the profiles, is off anyway. A cluster given by address keeps its own.
QUIET_CLUSTER = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
}
Batch = list[tuple[int, int, dict[str, Any]]]


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a sweep; finished runs are kept in :attr:`path` for ``--resume``."""

    def __init__(self, path: Path, done: int, total: int) -> None:
        super().__init__(f"{path}: {done} of {total} runs done")
        self.path, self.done, self.total = path, done, total


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _replace(path: Path, write: Callable[[Path], None]) -> None:
    """Write a file through a temporary name, so it is never seen half-written."""
    tmp = path.with_name(f".tmp-{path.name}")
    write(tmp)
    tmp.replace(path)


def _encode(column: pd.Series) -> pd.Series:
    """A parameter column Parquet can hold: numbers stay numbers, the rest becomes YAML text."""
    values = column.tolist()
    if all(isinstance(v, bool | np.bool_) for v in values):
        return column.astype(bool)
    if all(
        v is None or (isinstance(v, int | float | np.number) and not isinstance(v, bool))
        for v in values
    ):
        return pd.to_numeric(column)
    return column.map(yaml_text)


class _Folder:
    """The sweep folder: parts written as runs finish, then the final tables."""

    def __init__(self, path: Path, plan: Sweep) -> None:
        self.path, self.plan = path, plan
        self.parts = path / "parts"
        self.buffer: list[RunRecord] = []
        self.flushed_at = time.monotonic()
        self.manifest: dict[str, Any] = {}

    @classmethod
    def create(cls, out: Path, plan: Sweep) -> _Folder:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        path, n = out / f"{stamp}_{plan.spec.name}", 1
        while path.exists():
            n += 1
            path = out / f"{stamp}_{plan.spec.name}-{n}"
        (path / "parts").mkdir(parents=True)
        folder = cls(path, plan)
        spec = plan.spec.model_dump(mode="json", exclude_none=True)
        (path / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        (path / "scenario.yaml").write_text(yaml.safe_dump(plan.base, sort_keys=False))
        folder.manifest = {
            "sweep": plan.spec.name,
            "sweep_file": str(plan.source),
            "scenario_file": str(plan.scenario_path),
            "status": "running",
            "started": _now(),
            "design": plan.spec.design,
            "parameters": plan.parameters,
            "runs_total": len(plan.runs),
            "ticks": plan.ticks,
            "outcomes": {name: asdict(o) for name, o in plan.outcomes.items()},
            "metrics_kept": plan.metrics,
            "git": git_state(),
            "environment": _environment(),
            "sessions": [],
        }
        folder.write_experiments({})
        return folder

    @classmethod
    def reopen(cls, path: Path, plan: Sweep) -> _Folder:
        folder = cls(path, plan)
        try:
            folder.manifest = json.loads((path / "manifest.json").read_text())
            stored = yaml.safe_load((path / "sweep.yaml").read_text())
            base = yaml.safe_load((path / "scenario.yaml").read_text())
        except (OSError, ValueError, yaml.YAMLError) as err:
            raise ScenarioError("--resume", str(path), f"not a sweep folder ({err})") from None
        status = folder.manifest.get("status")
        if status == "complete":
            raise ScenarioError("--resume", str(path), "this sweep is already complete")
        session = (folder.manifest.get("sessions") or [{}])[-1]
        if status == "running" and _alive(session.get("pid"), session.get("host")):
            raise ScenarioError("--resume", str(path), f"still running (pid {session['pid']})")
        if stored != plan.spec.model_dump(mode="json", exclude_none=True):
            raise ScenarioError("--resume", str(path), "the sweep file changed since it started")
        plan.base = base  # resumed runs use the scenario as it was when the sweep started
        return folder

    # ---------------------------------------------------------------- progress

    def finished(self) -> dict[int, str]:
        """Run id → status of every run written to the parts (ok or failed)."""
        done: dict[int, str] = {}
        for part in sorted(self.parts.glob("outcomes-*.parquet")):
            table = pd.read_parquet(part, columns=["run_id", "status"])
            done.update(zip(table["run_id"].tolist(), table["status"].tolist(), strict=True))
        return done

    def add(self, records: Sequence[RunRecord]) -> None:
        self.buffer.extend(r for r in records if r.status != "lost")
        if len(self.buffer) >= FLUSH_RUNS or time.monotonic() - self.flushed_at > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.flushed_at = time.monotonic()
        if not self.buffer:
            return
        seq = len(list(self.parts.glob("outcomes-*.parquet")))
        outcomes = pd.DataFrame(
            [
                {
                    "run_id": r.run_id,
                    "status": r.status,
                    "error": r.error,
                    "seconds": r.seconds,
                    **{n: r.outcomes.get(n, np.nan) for n in self.plan.outcomes},
                }
                for r in self.buffer
            ]
        )
        frames = [r.metrics for r in self.buffer if r.metrics is not None]
        if frames:
            metrics = pd.concat(frames, ignore_index=True)
            _replace(self.parts / f"metrics-{seq:06d}.parquet", metrics.to_parquet)
        _replace(self.parts / f"outcomes-{seq:06d}.parquet", outcomes.to_parquet)
        self.buffer = []

    # ---------------------------------------------------------------- tables and manifest

    def write_experiments(self, lost: dict[int, str]) -> None:
        runs = self.plan.runs
        table = runs[["run_id", "point", "replicate", "seed"]].copy()
        for name in self.plan.parameters:
            table[name] = _encode(runs[name])
        ids = table["run_id"]
        table["status"], table["error"], table["seconds"] = "pending", "", np.nan
        is_lost = ids.isin(list(lost))
        table.loc[is_lost, "status"] = "lost"
        table.loc[is_lost, "error"] = ids[is_lost].map(lost)
        parts = sorted(self.parts.glob("outcomes-*.parquet"))
        if parts:
            columns = ["run_id", "status", "error", "seconds"]
            done = pd.concat([pd.read_parquet(p, columns=columns) for p in parts])
            done = done.drop_duplicates("run_id", keep="last").set_index("run_id")
            is_done = ids.isin(done.index)
            for column in ("status", "error", "seconds"):
                table.loc[is_done, column] = ids[is_done].map(done[column])
        table["command"] = [self.plan.command(row) for row in runs.to_dict("records")]
        _replace(self.path / "experiments.parquet", table.to_parquet)

    def write_manifest(self, **changes: Any) -> None:
        self.manifest.update(changes)
        text = json.dumps(self.manifest, indent=2, default=str)
        _replace(self.path / "manifest.json", lambda p: p.write_text(text))

    def consolidate(self) -> None:
        """Merge the parts into the final outcomes and metrics tables, sorted by run."""
        import pyarrow.dataset as ds
        import pyarrow.parquet as pq

        parts = sorted(self.parts.glob("outcomes-*.parquet"))
        outcomes = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        outcomes = outcomes.sort_values("run_id").reset_index(drop=True)
        _replace(self.path / "outcomes.parquet", outcomes.to_parquet)
        metric_parts = [str(p) for p in sorted(self.parts.glob("metrics-*.parquet"))]
        dest = self.path / "metrics.parquet"
        if not metric_parts:
            empty = pd.DataFrame(columns=["run_id", "tick", "date", *self.plan.metrics])
            _replace(dest, empty.to_parquet)
        else:
            dataset = ds.dataset(metric_parts, format="parquet")
            ids = np.unique(dataset.to_table(columns=["run_id"]).column("run_id").to_numpy())
            tmp = dest.with_name(f".tmp-{dest.name}")
            writer: pq.ParquetWriter | None = None
            for lo in range(0, len(ids), CHUNK_RUNS):
                first, last = int(ids[lo]), int(ids[min(lo + CHUNK_RUNS, len(ids)) - 1])
                chunk = dataset.to_table(
                    filter=(ds.field("run_id") >= first) & (ds.field("run_id") <= last)
                ).sort_by([("run_id", "ascending"), ("tick", "ascending")])
                if writer is None:
                    writer = pq.ParquetWriter(tmp, chunk.schema)
                writer.write_table(chunk.cast(writer.schema))
            if writer is not None:
                writer.close()
            tmp.replace(dest)
        shutil.rmtree(self.parts)


def _environment() -> dict[str, Any]:
    env = environment()
    for name in ("dask", "distributed", "SALib"):
        try:
            env["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env["packages"][name] = None
    return env


def _alive(pid: int | None, host: str | None) -> bool:
    if not pid or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def _resumable(out: Path, name: str) -> Path:
    """The newest unfinished folder of this sweep under ``out``."""
    for path in sorted(out.glob(f"*_{name}*"), reverse=True):
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
        if manifest.get("sweep") == name and manifest.get("status") != "complete":
            return path
    raise ScenarioError("--resume", str(out), f"no unfinished sweep '{name}' in this folder")


# ------------------------------------------------------------------ executors


def _serial(job: Job, batches: Sequence[Batch]) -> Iterator[list[RunRecord]]:
    for batch in batches:
        yield run_batch(job, batch)


def _on_dask(
    client: Any, window: int, job: Job, batches: Sequence[Batch]
) -> Iterator[list[RunRecord]]:
    """Submit batches (at most ``window`` in flight) and yield their records as they finish."""
    from distributed import as_completed

    queue = iter(batches)
    in_flight: dict[Any, Batch] = {}
    finished = as_completed()

    def submit() -> None:
        batch = next(queue, None)
        if batch is not None:
            future = client.submit(run_batch, job, batch, pure=False)
            in_flight[future] = batch
            finished.add(future)

    for _ in range(window):
        submit()
    try:
        for future in finished:
            batch = in_flight.pop(future)
            try:
                records = future.result()
            except Exception as err:  # the worker died too often (KilledWorker) or similar
                error = " ".join(f"{type(err).__name__}: {err}".split())[:500]
                records = [RunRecord(run_id, "lost", 0.0, error=error) for run_id, _, _ in batch]
            future.release()
            submit()
            yield records
    finally:
        if in_flight:
            client.cancel(list(in_flight))


@contextmanager
def _executor(
    workers: int, address: str | None
) -> Iterator[Callable[[Job, Sequence[Batch]], Iterator[list[RunRecord]]]]:
    """Run batches in this process (``workers=0``), or on a Dask cluster."""
    if address is None and workers == 0:
        yield _serial
        return
    import dask
    from distributed import Client, LocalCluster

    if address is not None:
        try:
            client = Client(address, timeout="10s")
        except (OSError, TimeoutError) as err:
            raise ScenarioError("--address", address, f"cannot connect ({err})") from None
        with client:
            slots = sum(client.nthreads().values()) or 1
            yield lambda job, batches: _on_dask(client, 2 * slots, job, batches)
        return
    # the workers inherit both: Ctrl-C reaches only this process, and the quieter housekeeping
    with _ignoring_ctrl_c(), dask.config.set(QUIET_CLUSTER):
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            env={threads.ENV: "1"},  # the workers share the cores: no helper threads (abm.threads)
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    with cluster, Client(cluster) as client:
        yield lambda job, batches: _on_dask(client, 2 * workers, job, batches)


@contextmanager
def _ignoring_ctrl_c() -> Iterator[None]:
    """Ignore SIGINT while worker processes are started, so they do not inherit Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# ------------------------------------------------------------------ the sweep


def sweep(
    sweep_file: str | Path,
    *,
    workers: int | None = None,
    address: str | None = None,
    out: str | Path = "runs",
    resume: bool | str | Path = False,
    batch_size: int | None = None,
    progress: bool = True,
    analyze: bool = True,
    on_result: Callable[[list[RunRecord]], None] | None = None,
) -> SweepResults:
    """Run a sweep file and write its folder.

    Args:
        sweep_file: the sweep YAML file.
        workers: worker processes of the embedded ``LocalCluster`` (default: CPU count);
            0 runs in this process without Dask.
        address: scheduler address of an existing Dask cluster (``tcp://host:8786``).
        out: folder under which the sweep folder is made.
        resume: True to finish the newest unfinished folder of this sweep under ``out``, or
            the path of the folder to finish.
        batch_size: runs per Dask task (default: the sweep file's ``batch_size``).
        progress: show a progress bar (runs done, failed, ETA).
        analyze: write the analysis tables and figures when the sweep is complete.
        on_result: called with the records of each finished batch, after they are stored.

    Returns:
        The sweep folder's results.

    Raises:
        ScenarioError: invalid sweep file, scenario, parameter or resume folder (nothing is
            written).
        SweepInterrupted: on Ctrl-C, after the finished runs are stored.

    """
    plan = load_sweep_file(sweep_file)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 0:
        raise ScenarioError("--workers", workers, "must be 0 (no Dask) or more")
    out = Path(out)
    folder = None
    if resume:
        path = _resumable(out, plan.spec.name) if resume is True else Path(resume)
        folder = _Folder.reopen(path, plan)
    with _executor(workers, address) as execute:
        folder = folder or _Folder.create(out, plan)
        return _run(folder, execute, workers, address, batch_size, progress, analyze, on_result)


def _run(
    folder: _Folder,
    execute: Callable[[Job, Sequence[Batch]], Iterator[list[RunRecord]]],
    workers: int,
    address: str | None,
    batch_size: int | None,
    progress: bool,
    analyze: bool,
    on_result: Callable[[list[RunRecord]], None] | None,
) -> SweepResults:
    plan, spec = folder.plan, folder.plan.spec
    done = folder.finished()
    todo = plan.runs[~plan.runs["run_id"].isin(list(done))]
    size = batch_size or spec.batch_size
    rows = todo.to_dict("records")
    batches = [
        [(int(r["run_id"]), int(r["seed"]), plan.overrides(r)) for r in rows[i : i + size]]
        for i in range(0, len(rows), size)
    ]
    job = Job(
        spec.name,
        plan.base,
        str(plan.scenario_path),
        plan.ticks,
        plan.outcomes,
        plan.metrics,
        spec.metrics_every,
    )
    session = {
        "started": _now(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "workers": workers if address is None else None,
        "address": address,
        "batch_size": size,
        "runs": 0,
    }
    folder.write_manifest(status="running", sessions=[*folder.manifest["sessions"], session])
    failed = sum(1 for s in done.values() if s == "failed")
    lost: dict[int, str] = {}
    started = time.perf_counter()
    bar = tqdm(
        total=len(plan.runs),
        initial=len(done),
        unit="run",
        desc=spec.name,
        disable=not progress,
        dynamic_ncols=True,
    )

    def close(status: str) -> None:
        """Store what finished; when complete, the final tables before the manifest says so."""
        bar.close()
        folder.flush()
        wall = time.perf_counter() - started
        session.update(
            ended=_now(),
            wall_seconds=round(wall, 3),
            runs_per_minute=round(60 * session["runs"] / wall, 2) if wall else None,
        )
        counts = pd.Series(folder.finished(), dtype=object).value_counts()
        folder.write_experiments(lost)
        if status == "complete":
            folder.consolidate()
        folder.write_manifest(
            status=status,
            ended=_now(),
            runs_ok=int(counts.get("ok", 0)),
            runs_failed=int(counts.get("failed", 0)),
            runs_lost=len(lost),
            sessions=[*folder.manifest["sessions"][:-1], session],
        )

    try:
        with closing(execute(job, batches)) as results:
            for records in results:
                folder.add(records)
                for record in records:
                    if record.status == "lost":
                        lost[record.run_id] = record.error
                    else:
                        session["runs"] += 1
                        failed += record.status == "failed"
                bar.update(len(records))
                bar.set_postfix(failed=failed, lost=len(lost), refresh=False)
                if on_result is not None:
                    on_result(records)
    except KeyboardInterrupt:
        close("interrupted")
        raise SweepInterrupted(folder.path, len(folder.finished()), len(plan.runs)) from None
    except Exception:  # the parent itself failed: keep what finished, resumable
        close("interrupted")
        raise
    folder.flush()
    complete = not lost and len(folder.finished()) == len(plan.runs)
    close("complete" if complete else "incomplete")
    if complete and analyze:
        from abm.analysis import analyze as write_analysis

        write_analysis(folder.path)
    return SweepResults(folder.path)
