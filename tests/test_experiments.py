"""Sweeps: sweep files, designs and seeds, Dask execution, failures, interruption and resume."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import yaml

from abm.experiments import (
    CRASH_ENV,
    ParameterRange,
    design_points,
    ema_model,
    load_sweep_file,
    run_seeds,
    simulate,
    yaml_text,
)
from abm.levers import scenario_data
from abm.scenario import ScenarioError, parse_override
from abm.sweeps import SweepInterrupted, sweep
from tests.worlds import CONFIGS

SMALL = CONFIGS / "tests" / "small.yaml"
TABLES = ("experiments", "outcomes", "metrics")


def write_sweep(tmp_path, name="tiny", **changes):
    """A tiny sweep of the small world (12 ticks after a 4-tick warm-up): 8 runs."""
    spec = {
        "name": name,
        "scenario": str(SMALL),
        "ticks": 12,
        "seed": 11,
        "replicates": 2,
        "set": {"market.warmup_ticks": 4},
        "parameters": {
            "tariff_rate": {"values": [0.0, 0.3]},
            "market.logit_beta": {"values": [6, 10]},
        },
        "outcomes": [
            "tariff_revenue_usd_million_sum",
            "price_alliance_landed_magnet_mean",
            {"peak_cn_share": {"metric": "cn_share_separation", "stat": "max"}},
        ],
        "metrics": ["price_alliance_landed_magnet", "tariff_revenue_usd_million"],
        **changes,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tables(folder):
    return {
        t: pd.read_parquet(folder / f"{t}.parquet").drop(columns="seconds", errors="ignore")
        for t in TABLES
    }


def assert_same_tables(a, b):
    for name in TABLES:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)


def abm(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "abm.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


@pytest.fixture(scope="module")
def cluster():
    """A 2-worker LocalCluster (processes, one thread each), shared by this module's tests."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as local:
        yield local


@pytest.fixture(scope="module")
def serial_tables(tmp_path_factory):
    """The tiny sweep run in this process without Dask: the reference tables."""
    tmp = tmp_path_factory.mktemp("serial")
    results = sweep(write_sweep(tmp), workers=0, out=tmp / "runs", progress=False, analyze=False)
    return tables(results.path)


# ------------------------------------------------------------------ sweep files


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"replicate": 2}, r"replicate = 2: unknown key"),
        ({"design": "factorial"}, r"design = 'factorial'"),
        ({"scenario": "nowhere.yaml"}, r"scenario = 'nowhere.yaml': no such scenario file"),
        (
            {"parameters": {"tariff_rate": {"values": [0.1, -1]}}},
            r"parameters\.tariff_rate\.values\.1 = -1: policies\.tariffs\.0\.rate",
        ),
        (
            {"parameters": {"market.logit_beta": {"values": [0]}}},
            r"parameters\.market\.logit_beta\.values\.0 = 0",
        ),
        ({"parameters": {"tariff_rate": {"low": 0, "high": 1}}}, r"needs values"),
        (
            {"design": "sobol", "samples": 24, "parameters": {"logit_beta": {"low": 2, "high": 9}}},
            r"samples = 24: a Sobol design needs a power of 2",
        ),
        (
            {
                "design": "lhs",
                "samples": 4,
                "parameters": {"floor_mechanism": {"low": 0, "high": 1}},
            },
            r"categorical lever can only be on a grid",
        ),
        ({"design": "lhs", "parameters": {"logit_beta": {"low": 2, "high": 9}}}, r"samples = None"),
        ({"set": {"tariff_rate": 0.1}}, r"parameters\.tariff_rate = 'tariff_rate': also fixed"),
        ({"outcomes": ["peak_price"]}, r"outcomes\.0 = 'peak_price': unknown"),
        ({"metrics": ["price_of_tea"]}, r"metrics\.0 = 'price_of_tea': no such metric"),
    ],
)
def test_a_bad_sweep_file_is_a_one_line_error_naming_key_and_value(tmp_path, change, message):
    path = write_sweep(tmp_path, **change)
    with pytest.raises(ScenarioError, match=message) as err:
        load_sweep_file(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_cli_refuses_a_bad_sweep_with_status_2_and_writes_nothing(tmp_path):
    out = tmp_path / "runs"
    done = abm("sweep", str(write_sweep(tmp_path, seed=-1)), "--out", str(out), "--workers", "0")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "seed = -1" in done.stderr
    assert not out.exists()


def test_shipped_sweeps_are_valid_and_sized_as_documented():
    grid = load_sweep_file(CONFIGS / "sweeps" / "tariff_x_floor.yaml")
    assert len(grid.runs) == 4 * 4 * 3 and grid.ticks == 240
    assert grid.runs.groupby("replicate")["seed"].nunique().eq(1).all()  # common seeds
    sobol = load_sweep_file(CONFIGS / "sweeps" / "sobol_uncertainty.yaml")
    assert len(sobol.runs) == 32 * (5 + 2)


# ------------------------------------------------------------------ designs and seeds


def test_run_seeds_are_spawned_distinct_and_fit_abm_run():
    seeds = run_seeds(20260201, 1000)
    assert len(set(seeds.tolist())) == 1000 and seeds.min() >= 0 and seeds.max() < 2**32
    assert run_seeds(20260201, 1000).tolist() == seeds.tolist()
    assert run_seeds(20260202, 10).tolist() != seeds[:10].tolist()


def test_grid_is_the_full_factorial_with_the_last_parameter_fastest():
    design = design_points(
        {"a": ParameterRange(values=[1, 2]), "b": ParameterRange(values=["x", "y", "z"])}, "grid"
    )
    assert design.values.tolist() == [[1, "x"], [1, "y"], [1, "z"], [2, "x"], [2, "y"], [2, "z"]]


def test_latin_hypercube_puts_one_point_in_every_stratum():
    n = 16
    parameters = {"a": ParameterRange(low=0, high=1), "b": ParameterRange(low=10, high=20)}
    design = design_points(parameters, "lhs", samples=n, seed=5)
    assert sorted(np.floor(design["a"] * n).astype(int)) == list(range(n))
    assert sorted(np.floor((design["b"] - 10) / 10 * n).astype(int)) == list(range(n))


@pytest.mark.parametrize("value", [1e-05, 0.1, 1 / 3, 2.5e20, 240, "oxide:NdPr", ["US", "EU"]])
def test_values_round_trip_through_the_re_run_command(value):
    assert parse_override(f"key={yaml_text(value)}")[1] == value


# ------------------------------------------------------------------ running sweeps


def test_sweep_on_a_dask_cluster_matches_the_serial_sweep(tmp_path, cluster, serial_tables):
    results = sweep(
        write_sweep(tmp_path),
        address=cluster.scheduler_address,
        out=tmp_path / "runs",
        progress=False,
    )
    assert results.complete and results.manifest["runs_ok"] == 8
    assert_same_tables(tables(results.path), serial_tables)
    names = {p.name for p in results.path.iterdir()}
    assert names == {
        "manifest.json",
        "sweep.yaml",
        "scenario.yaml",
        "analysis",
        *(f"{t}.parquet" for t in TABLES),
    }
    figures = {p.name for p in (results.path / "analysis").iterdir()}
    assert {
        "outcomes_by_point.csv",
        "heatmap.png",
        "fan_price_alliance_landed_magnet.png",
    } <= figures
    ex = serial_tables["experiments"]
    assert (ex["status"] == "ok").all() and ex["seed"].nunique() == 8
    metrics = serial_tables["metrics"]
    assert len(metrics) == 8 * 13 and list(metrics.columns[:3]) == ["run_id", "tick", "date"]
    # the tariff raises revenue in every run that has one, and only there
    taxed = ex.set_index("run_id")["tariff_rate"] > 0
    revenue = serial_tables["outcomes"].set_index("run_id")["tariff_revenue_usd_million_sum"]
    assert (revenue[taxed] > 0).all() and (revenue[~taxed] == 0).all()


def test_abm_run_repeats_any_run_of_a_sweep_exactly(tmp_path, serial_tables):
    row = serial_tables["experiments"].iloc[5]
    args = shlex.split(row["command"])
    assert args[:2] == ["abm", "run"] and str(row["seed"]) in args
    done = abm(*args[1:], "--out", str(tmp_path), "--no-progress")
    assert done.returncode == 0, done.stderr
    (folder,) = tmp_path.iterdir()
    alone = pd.read_parquet(folder / "metrics.parquet")
    kept = serial_tables["metrics"].query(f"run_id == {row['run_id']}").set_index("tick")
    for metric in ("price_alliance_landed_magnet", "tariff_revenue_usd_million"):
        assert alone[metric].tolist() == kept[metric].tolist()


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    # each value is valid alone, but a buy trigger of 140 above a release trigger of 100 is not
    reserve = {
        "policies.reserve": {
            "product": "oxide:NdPr",
            "loan_usd_million": 10,
            "buy_trigger_usd_per_kg": 40,
            "release_trigger_usd_per_kg": 150,
        }
    }
    path = write_sweep(
        tmp_path,
        replicates=1,
        set={"market.warmup_ticks": 4, **reserve},
        parameters={
            "policies.reserve.buy_trigger_usd_per_kg": {"values": [40, 140]},
            "policies.reserve.release_trigger_usd_per_kg": {"values": [150, 100]},
        },
    )
    results = sweep(path, workers=0, out=tmp_path / "runs", progress=False, analyze=False)
    ex = results.experiments.set_index("run_id")
    assert results.complete and ex["status"].tolist() == ["ok", "ok", "ok", "failed"]
    assert "release_trigger_usd_per_kg" in ex.loc[3, "error"] and "\n" not in ex.loc[3, "error"]
    assert (
        results.outcomes.set_index("run_id")
        .loc[3]
        .drop(["status", "error", "seconds"])
        .isna()
        .all()
    )
    assert sorted(results.metrics["run_id"].unique()) == [0, 1, 2]


def set_env(name, value):
    """Runs on a Dask worker (client.run): set or clear an environment variable."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def test_a_worker_killed_mid_sweep_does_not_lose_a_run(tmp_path, cluster, serial_tables):
    from distributed import Client

    marker = tmp_path / "crashed"
    with Client(cluster.scheduler_address) as client:
        client.run(set_env, CRASH_ENV, f"tiny:3:{marker}")
        try:
            results = sweep(
                write_sweep(tmp_path),
                address=cluster.scheduler_address,
                out=tmp_path / "runs",
                progress=False,
                analyze=False,
            )
        finally:
            client.run(set_env, CRASH_ENV, None)
        assert marker.exists()  # a worker process really died (os._exit) running run 3
        client.wait_for_workers(2, timeout=60)  # and its nanny replaced it
    assert results.complete and results.manifest["runs_lost"] == 0
    assert_same_tables(tables(results.path), serial_tables)


def test_resume_after_an_interruption_gives_the_uninterrupted_tables(tmp_path, serial_tables):
    path = write_sweep(tmp_path)
    done = []

    def stop_after_three(records):
        done.extend(records)
        if len(done) >= 3:
            raise KeyboardInterrupt

    with pytest.raises(SweepInterrupted) as stop:
        sweep(path, workers=0, out=tmp_path / "runs", progress=False, on_result=stop_after_three)
    folder = stop.value.path
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and stop.value.done == 3
    assert not (folder / "outcomes.parquet").exists()  # final tables only when complete
    status = pd.read_parquet(folder / "experiments.parquet")["status"]
    assert status.value_counts().to_dict() == {"pending": 5, "ok": 3}
    results = sweep(path, workers=0, out=tmp_path / "runs", progress=False, resume=True)
    assert results.path == folder and results.complete
    assert [s["runs"] for s in results.manifest["sessions"]] == [3, 5]
    assert_same_tables(tables(folder), serial_tables)
    with pytest.raises(ScenarioError, match="already complete"):
        sweep(path, workers=0, out=tmp_path / "runs", resume=folder)


def rerun_revenue(row):
    """Tariff revenue of one run of the tiny sweep, recomputed alone from its row."""
    overrides = {
        "market.warmup_ticks": 4,
        "tariff_rate": float(row["tariff_rate"]),
        "market.logit_beta": float(row["market.logit_beta"]),
    }
    frame, _ = simulate(scenario_data(SMALL), overrides, int(row["seed"]), 12)
    return frame["tariff_revenue_usd_million"].iloc[1:].sum()


def test_ctrl_c_stops_a_cluster_sweep_cleanly_and_resume_finishes_it(tmp_path):
    path = write_sweep(tmp_path, replicates=5)  # 20 runs
    out = tmp_path / "runs"
    command = [
        sys.executable,
        "-m",
        "abm.cli",
        "sweep",
        str(path),
        "--workers",
        "2",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    stderr = bytearray()
    reader = threading.Thread(
        target=lambda: [
            stderr.extend(c) for c in iter(lambda: os.read(proc.stderr.fileno(), 4096), b"")
        ]
    )
    reader.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until the progress bar shows a few runs done
        counts = [int(n) for n in re.findall(rb"(\d+)/20 ", bytes(stderr))]
        if counts and max(counts) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole process group
    proc.wait(timeout=120)
    reader.join(timeout=10)
    message = stderr.decode()
    assert proc.returncode == 130, message
    assert "interrupted" in message and "--resume" in message and "Traceback" not in message
    (folder,) = out.iterdir()
    before = pd.read_parquet(folder / "experiments.parquet")
    assert set(before["status"]) == {"ok", "pending"}
    done = abm("sweep", str(path), "--resume", "--workers", "2", "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    ex = pd.read_parquet(folder / "experiments.parquet").set_index("run_id")
    outcomes = pd.read_parquet(folder / "outcomes.parquet").set_index("run_id")
    assert len(outcomes) == 20 and (ex["status"] == "ok").all()
    # a run finished before Ctrl-C and one finished after resuming are each the run alone
    first_done = int(before.loc[before["status"] == "ok", "run_id"].iloc[0])
    last_done = int(before.loc[before["status"] == "pending", "run_id"].iloc[-1])
    for run_id in (first_done, last_done):
        assert outcomes.loc[run_id, "tariff_revenue_usd_million_sum"] == rerun_revenue(
            ex.loc[run_id]
        )


@pytest.mark.filterwarnings("ignore:ipyparallel not installed:UserWarning")  # EMA's own import
def test_ema_workbench_drives_the_model(tmp_path):
    from ema_workbench import perform_experiments

    outcomes = ["tariff_revenue_usd_million_sum", "price_alliance_landed_magnet_mean"]
    model = ema_model(
        {"logit_beta": (6.0, 10.0)},
        levers={"tariff_rate": (0.0, 0.3)},
        outcomes=outcomes,
        scenario=SMALL,
        ticks=6,
        seed=3,
        overrides={"market.warmup_ticks": 4},
    )
    experiments, results = perform_experiments(model, scenarios=3, policies=2)
    assert len(experiments) == 6 and set(results) == set(outcomes)
    assert np.isfinite(results["price_alliance_landed_magnet_mean"]).all()
    # each EMA row is the model's own run with those parameters
    row = experiments.iloc[4]
    overrides = {
        "market.warmup_ticks": 4,
        "logit_beta": row["logit_beta"],
        "tariff_rate": row["tariff_rate"],
    }
    frame, _ = simulate(scenario_data(SMALL), overrides, 3, 6)
    assert (
        results["tariff_revenue_usd_million_sum"][4]
        == frame["tariff_revenue_usd_million"].iloc[1:].sum()
    )


@pytest.mark.parametrize(("design", "samples", "runs"), [("sobol", 4, 4 * 4), ("morris", 3, 3 * 3)])
def test_sensitivity_sweeps_write_their_index_tables(tmp_path, design, samples, runs):
    path = write_sweep(
        tmp_path,
        design=design,
        samples=samples,
        replicates=1,
        ticks=6,
        parameters={"tariff_rate": {"low": 0.0, "high": 0.4}, "logit_beta": {"low": 4, "high": 12}},
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = sweep(path, workers=0, out=tmp_path / "runs", progress=False)
    assert len(results.experiments) == runs and results.complete
    table = pd.read_csv(results.path / "analysis" / f"{design}.csv")
    varying = results.outcomes.drop(columns=["run_id", "status", "error", "seconds"]).nunique()
    # outcomes × parameters; Sobol indices of an outcome that never varies are undefined, and
    # each such outcome is named in a warning
    outcomes = 3 if design == "morris" else (varying > 1).sum()
    assert len(table) == 2 * outcomes
    unindexed = [str(w.message).split(":")[0] for w in caught if "no Sobol" in str(w.message)]
    assert unindexed == ([] if design == "morris" else list(varying.index[varying <= 1]))
    assert (results.path / "analysis" / "sensitivity.png").is_file()
    revenue = table[table["outcome"] == "tariff_revenue_usd_million_sum"].set_index("parameter")
    # tariff revenue is driven by the tariff, far more than by route-choice sensitivity
    column = "ST" if design == "sobol" else "mu_star"
    assert revenue.loc["tariff_rate", column] > 5 * abs(revenue.loc["logit_beta", column])


def test_abm_analyze_rewrites_the_analysis_and_refuses_a_non_sweep(tmp_path, cluster):
    results = sweep(
        write_sweep(tmp_path),
        address=cluster.scheduler_address,
        out=tmp_path / "runs",
        progress=False,
        analyze=False,
    )
    assert not (results.path / "analysis").exists()
    done = abm("analyze", str(results.path))
    assert done.returncode == 0, done.stderr
    assert (results.path / "analysis" / "heatmap.png").is_file()
    assert (results.path / "analysis" / "outcomes_by_point.csv").is_file()
    refused = abm("analyze", str(tmp_path))
    assert refused.returncode == 2 and "not a sweep folder" in refused.stderr


# the module's other cluster may hold Dask's default HTTP port: the scheduler then takes another
@pytest.mark.filterwarnings("ignore:Port .* is already in use:UserWarning")
def test_the_embedded_cluster_turns_down_dask_housekeeping():
    """Its workers run without Dask's statistical profiler and with slower health checks,
    which otherwise take the GIL from the runs; this process's own settings stay as they were."""
    import dask
    from distributed import default_client

    from abm import sweeps as sweeps_module

    keys = list(sweeps_module.QUIET_CLUSTER)
    with sweeps_module._executor(1, None):
        seen = default_client().run(lambda: {key: dask.config.get(key) for key in keys})
    assert list(seen.values()) == [sweeps_module.QUIET_CLUSTER]
    assert dask.config.get("distributed.worker.profile.enabled") is True
