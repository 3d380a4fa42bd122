"""The `abm run` command: run folders, manifests, and exit status 2 on bad input."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from tests.worlds import CONFIGS

SMALL = CONFIGS / "tests" / "small.yaml"


def abm(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "abm.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_run_writes_a_complete_run_folder(tmp_path):
    out = tmp_path / "runs"
    done = abm(
        "run",
        str(SMALL),
        "--seed",
        "4",
        "--ticks",
        "12",
        "--set",
        "market.logit_beta=10",
        "--out",
        str(out),
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    (folder,) = out.iterdir()
    assert folder.name.endswith("_small")
    names = {p.name for p in folder.iterdir()}
    assert names == {
        "manifest.json",
        "config.yaml",
        "metrics.parquet",
        "flows.parquet",
        "summary.png",
    }
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["seed"] == 4
    assert manifest["config"]["market"]["logit_beta"] == 10
    assert {"commit", "dirty"} <= set(manifest["git"])
    assert manifest["environment"]["packages"]["mesa"].startswith("3.")
    assert manifest["started"] <= manifest["ended"]
    metrics = pd.read_parquet(folder / "metrics.parquet")
    assert len(metrics) == 13 and metrics["date"].iloc[0] == "2025-01"
    flows = pd.read_parquet(folder / "flows.parquet")
    assert set(flows["tick"]) == set(range(1, 13)) and (flows["flow_t"] > 0).all()


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "mines.0.capacity_t_per_yr=-1"],
        ["--set", "typo_key=1"],
        ["--set", "ticks=abc"],
        ["--set", "buyers.0.product=oxide:XX"],
        ["--set", "nonsense"],
        ["--ticks", "0"],
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args):
    out = tmp_path / "runs"
    done = abm("run", str(SMALL), "--out", str(out), *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("abm: error:")
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_a_bad_thread_count_exits_2_with_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "runs"
    done = abm("run", str(SMALL), "--out", str(out), env={**os.environ, "ABM_THREADS": "many"})
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "abm: error: ABM_THREADS = 'many': must be a whole number of threads, at least 1"
    )
    assert not out.exists()


def test_missing_file_exits_2(tmp_path):
    done = abm("run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "runs"))
    assert done.returncode == 2 and "no such scenario file" in done.stderr


def test_buyer_without_supplier_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "runs"
    done = abm(
        "run",
        str(SMALL),
        "--out",
        str(out),
        "--set",
        "processors.2.stage=separation",
        "--set",
        "processors.3.stage=separation",
        "--set",
        "processors.2.recovery={NdPr: 0.9}",
        "--set",
        "processors.3.recovery={NdPr: 0.9}",
    )
    assert done.returncode == 2
    assert "no possible supplier" in done.stderr and "buyers.0.product" in done.stderr
    assert not out.exists()
