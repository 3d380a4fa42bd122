"""Robustness (issue 7): bad input, failing and interrupted runs, numerical safety.

- Bad scenarios and files give one ``ScenarioError`` line naming the file, key path and value.
- ``abm run`` exits 2 on bad input and writes nothing, exits 1 on a failed run and leaves a
  ``status: failed`` manifest with the tick, exits 130 on Ctrl-C/SIGTERM and writes nothing.
- Run folders are atomic; a name can never reach outside the output folder.
- Extreme but valid scenarios keep every invariant on every tick (the checks of
  ``tests/test_accounting.py``, at its 1e-9 tolerances, plus the model's own per-tick check).
- A broken invariant inside the model stops it with an error naming tick, agent and quantity.

Property-based fuzzing of the loader and of random worlds is in ``tests/test_fuzz.py``.
"""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
import yaml

from abm import RareEarthModel, invariants, run
from abm import cli as abm_cli
from abm import plots as abm_plots
from abm import runs as abm_runs
from abm.invariants import InvariantError
from abm.runs import RunFailed, RunInterrupted, new_run_dir, write_run
from abm.scenario import ScenarioError, build_scenario, load_scenario
from tests.test_accounting import check_invariants, run_checked
from tests.worlds import CONFIGS

SMALL = CONFIGS / "tests" / "small.yaml"
SMALL_DATA = yaml.safe_load(SMALL.read_text())
COMPLETE_FILES = {"metrics.parquet", "flows.parquet", "summary.png"}


def one_line(err: BaseException) -> str:
    message = str(err)
    assert "\n" not in message and "Traceback" not in message
    return message


def tiny_world(magnet: bool = False, **changes) -> dict:
    """One mine, one separation plant (one magnet plant), one buyer, one project: the least
    a world needs; no warm-up, so each tick is cheap."""
    data = {
        "name": "tiny",
        "ticks": 12,
        "alliance": ["US"],
        "elements": ["NdPr", "other"],
        "countries": {"CN": {"region": "asia"}, "US": {"region": "americas"}},
        "initial_prices_usd_per_kg": {"concentrate": 8.0, "oxide:NdPr": 60.0, "oxide:other": 2.0},
        "market": {"warmup_ticks": 0},
        "mines": [
            {
                "name": "mine",
                "country": "CN",
                "capacity_t_per_yr": 1000,
                "cash_cost_usd_per_kg": 3.0,
                "composition": {"NdPr": 0.2, "other": 0.8},
            }
        ],
        "processors": [
            {
                "name": "sep",
                "country": "US",
                "stage": "separation",
                "capacity_t_per_yr": 1000,
                "processing_cost_usd_per_kg": 2.0,
                "recovery": {"NdPr": 0.95, "other": 0.9},
            }
        ],
        "buyers": [
            {
                "name": "user",
                "country": "US",
                "product": "magnet" if magnet else "oxide:NdPr",
                "base_demand_t_per_yr": 150 if magnet else 180,
                "reference_price_usd_per_kg": 60,
                "reservation_price_usd_per_kg": 600,
            }
        ],
        "projects": [
            {
                "name": "project",
                "country": "US",
                "stage": "mine",
                "capacity_t_per_yr": 500,
                "unit_cost_usd_per_kg": 4.0,
                "capex_usd_million": 10,
                "earliest_start": "2025-06",
                "lead_time_years": 1,
                "composition": {"NdPr": 0.25, "other": 0.75},
            }
        ],
    }
    if magnet:
        data["magnet"] = {"recipe_t_per_t": {"NdPr": 0.3}}
        data["initial_prices_usd_per_kg"]["magnet"] = 60.0
        data["processors"].append(
            {
                "name": "magnets",
                "country": "US",
                "stage": "magnet",
                "capacity_t_per_yr": 300,
                "processing_cost_usd_per_kg": 15.0,
            }
        )
    for path, value in changes.items():
        node = data
        *parents, last = path.split("__")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[last] = value
    return data


# ------------------------------------------------------------------ bad scenario values

BAD_OVERRIDES = [
    # non-finite, too large, yes/no where a number is expected
    (["mines.0.capacity_t_per_yr=.inf"], "mines.0.capacity_t_per_yr", "finite"),
    (["mines.0.cash_cost_usd_per_kg=.nan"], "mines.0.cash_cost_usd_per_kg", "finite"),
    (["initial_prices_usd_per_kg.magnet=-.inf"], "initial_prices_usd_per_kg.magnet", "finite"),
    (["mines.0.composition.NdPr=.nan"], "mines.0.composition.NdPr", "finite"),
    (["buyers.0.base_demand_t_per_yr=2e12"], "buyers.0.base_demand_t_per_yr", "1e+12"),
    (["investment.interval_months=10000000000000"], "investment.interval_months", "1e+12"),
    (["mines.0.capacity_t_per_yr=yes"], "mines.0.capacity_t_per_yr", "not true/false"),
    (["buyers.0.elasticity=true"], "buyers.0.elasticity", "not true/false"),
    (["mines.0.composition.NdPr=on"], "mines.0.composition", "not true/false"),
    (["events=[{at: true}]"], "events.0.at", "not true/false"),
    # wrong types, out of range
    (["ticks=ten"], "ticks", "valid integer"),
    (["ticks=0"], "ticks", "greater than or equal to 1"),
    (["ticks=2.5"], "ticks", "fractional part"),
    (["mines=5"], "mines", "valid list"),
    (["mines.0=5"], "mines.0", "valid dictionary"),
    (["mines=[]"], "mines", "at least 1 item"),
    (["market=12"], "market", "valid dictionary"),
    (["processors.0.recovery.NdPr=1.5"], "processors.0.recovery", "[0, 1]"),
    (["buyers.0.min_compliant_share=-0.1"], "buyers.0.min_compliant_share", "-0.1"),
    (["mines.1.composition={NdPr: 0.6, other: 0.6}"], "mines.1.composition", "not 1"),
    (["countries.US.region=mars"], "countries.US.region", "mars"),
    (["processors.0.stage=smelter"], "processors.0.stage", "smelter"),
    (["market.logit_beta=0"], "market.logit_beta", "greater than 0"),
    # unknown keys, at any depth
    (["colour=red"], "colour", "unknown key"),
    (["market.logit_bet=3"], "market.logit_bet", "unknown key"),
    (["buyers.0.substitution.speed=3"], "buyers.0.substitution.speed", "unknown key"),
    # unknown references to countries, elements, products, agents, sectors
    (["mines.0.country=ZZ"], "mines.0.country", "unknown country"),
    (["alliance=[US, ZZ]"], "alliance.1", "unknown country"),
    (["china=ZZ"], "china", "ZZ"),
    (["mines.0.composition={NdPr: 0.2, Sm: 0.8}"], "mines.0.composition.Sm", "unknown element"),
    (["magnet.recipe_t_per_t={Dy: 0.3}"], "magnet.recipe_t_per_t.Dy", "unknown element"),
    (["buyers.0.product=oxide:Sm"], "buyers.0.product", "unknown product"),
    (
        ["policies.tariffs=[{origin: Mars, destination: US, rate: 0.1}]"],
        "policies.tariffs.0.origin",
        "unknown country or bloc",
    ),
    (
        ["policies.export_controls=[{product: oxide:Sm, quota_t_per_yr: 5}]"],
        "policies.export_controls.0.product",
        "unknown product",
    ),
    (["events=[{at: 3, outage: [no_such_mine]}]"], "events.0.outage.0", "no producer"),
    (
        ["events=[{at: 3, demand_shock: {multiplier: 2, sector: evs}}]"],
        "events.0.demand_shock.sector",
        "no buyer has this sector",
    ),
    (
        ["events=[{at: 3, set: {policies.tariffs: [{origin: CN, destination: XX, rate: 1}]}}]"],
        "events.0.set.policies.tariffs.0.destination",
        "XX",
    ),
    (["events=[{at: 3, set: {ticks: 5}}]"], "events.0.set.ticks", "policies.* and alliance"),
    (["mines.cn_mine.sells_to=[us_magnet]"], "mines.0.sells_to.0", "no separation plant"),
    # events outside the horizon, bad dates
    (["events=[{at: 61}]"], "events.0.at", "outside the horizon"),
    (["events=[{at: -1}]"], "events.0.at", "outside the horizon"),
    (["events=[{at: '2031-01'}]"], "events.0.at", "outside the horizon"),
    (["events=[{at: '2025-13'}]"], "events.0.at", "YYYY-MM"),
    (["events=[{at: soon}]"], "events.0.at", "YYYY-MM"),
    (["start=2025-1"], "start", "YYYY-MM"),
    (["projects.0.earliest_start=next year"], "projects.0.earliest_start", "YYYY-MM"),
    # cross-field contradictions
    (["alliance=[US, CN]"], "alliance.1", "china country cannot be a member"),
    (["elements=[NdPr, NdPr]"], "elements", "unique"),
    (["buyers.1.name=cn_ev"], "buyers.1.name", "unique"),
    (["buyers.0.reservation_price_usd_per_kg=10"], "buyers.0.reservation_price", "below"),
    (["buyers.0.reference_price_usd_per_kg=6000"], "buyers.0.reference_price", "10x"),
    (
        ["policies.reserve={buy_trigger_usd_per_kg: 90, release_trigger_usd_per_kg: 80}"],
        "policies.reserve.release_trigger_usd_per_kg",
        "above the buy trigger",
    ),
    (
        [
            "processors.2.stage=separation",
            "processors.3.stage=separation",
            "processors.2.recovery={NdPr: 0.9}",
            "processors.3.recovery={NdPr: 0.9}",
        ],
        "buyers.0.product",
        "no possible supplier",
    ),
    (
        ["mines.cn_mine.sells_to=[us_sep]", "mines.au_mine.sells_to=[us_sep]", "projects=[]"],
        "processors.0.name",
        "no mine can sell this separation plant",
    ),
    # run names cannot leave the output folder
    (["name=../../etc"], "name", "names the run folder"),
    (["name=a/b"], "name", "names the run folder"),
    (["name="], "name", "names the run folder"),
    (["name=.."], "name", "names the run folder"),
    (["name=.hidden"], "name", "names the run folder"),
    # malformed --set
    (["noequals"], "--set", "key.path=value"),
    (["=5"], "--set", "key.path=value"),
    (["market..logit_beta=3"], "--set", "key.path=value"),
    (["market.logit_beta=[1, 2"], "market.logit_beta", "not valid YAML"),
    (["name.first=x"], "name.first", "not a section"),
    (["mines.9.capacity_t_per_yr=1"], "mines.9", "index out of range"),
    (["mines.nosuch.capacity_t_per_yr=1"], "mines.nosuch", "no list item"),
    (["description=!!python/object/apply:os.system [echo]"], "description", "not valid YAML"),
]


@pytest.mark.parametrize(("overrides", "key", "text"), BAD_OVERRIDES)
def test_bad_values_give_one_line_naming_file_key_and_value(overrides, key, text):
    with pytest.raises(ScenarioError) as info:
        load_scenario(SMALL, overrides)
    message = one_line(info.value)
    assert key in message and text in message, message


def test_no_supplier_under_standing_policies_but_an_embargo_event_is_allowed():
    data = copy.deepcopy(SMALL_DATA)
    data["processors"] = [p for p in data["processors"] if p["name"] != "jp_magnet"]
    embargo = [{"product": "magnet", "destination": "alliance", "quota_t_per_yr": 0}]
    standing = copy.deepcopy(data)
    standing["policies"] = {"export_controls": embargo}
    with pytest.raises(ScenarioError, match=r"buyers\.1\.product.*no possible supplier"):
        build_scenario(standing, "embargo.yaml")
    # the same embargo from a dated event is an experiment (shortage), not a contradiction
    data["events"] = [{"at": 6, "set": {"policies.export_controls": embargo}}]
    model = run_checked(RareEarthModel(build_scenario(data), rng=0), 12)
    frame = model.datacollector.get_model_vars_dataframe()
    assert frame["shortage_alliance"].iloc[-1] > frame["shortage_alliance"].iloc[1]


def test_ban_on_allied_mines_leaves_a_chinese_plant_without_ore():
    data = copy.deepcopy(SMALL_DATA)
    data["mines"] = [dict(data["mines"][1], country="US")]  # the only mine is allied
    data["projects"] = [p for p in data["projects"] if p["stage"] != "mine"]
    data["policies"] = {"compliance": {"ban_allied_mines_to_china": True}}
    with pytest.raises(ScenarioError, match=r"processors\.0\.name = 'cn_sep'.*no mine can sell"):
        build_scenario(data)


def test_error_messages_stay_short_for_huge_or_multiline_values():
    with pytest.raises(ScenarioError) as info:
        load_scenario(SMALL, ["colour=" + "x" * 100_000])
    assert len(one_line(info.value)) < 300
    with pytest.raises(ScenarioError) as info:
        build_scenario({**SMALL_DATA, "bad\nkey": "line one\nline two"})
    assert "unknown key" in one_line(info.value)


# ------------------------------------------------------------------ bad files


def _write(tmp_path, name, content):
    path = tmp_path / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def _alias_bomb() -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    return "\n".join([*lines, "name: bomb"]) + "\n"


BAD_FILES = [
    ("empty.yaml", "", "is empty"),
    ("blank.yaml", "   \n\n", "is empty"),
    ("comment.yaml", "# only a comment\n", "is empty"),
    ("list.yaml", "- a\n- b\n", "must be a YAML mapping"),
    ("scalar.yaml", "42\n", "must be a YAML mapping"),
    ("unclosed.yaml", "name: [unclosed\n", "not valid YAML"),
    ("tabs.yaml", "name:\n\t- x\n", "not valid YAML"),
    ("two_docs.yaml", "name: a\n---\nname: b\n", "not valid YAML"),
    ("binary.yaml", bytes(range(256)) * 4, "not valid YAML"),
    ("latin1.yaml", "name: caf\xe9\n".encode("latin-1"), "not valid YAML"),
    ("python.yaml", "name: !!python/object/apply:os.system ['echo hacked']\n", "not valid YAML"),
    ("tag.yaml", "name: !include other.yaml\n", "not valid YAML"),
    ("duplicate.yaml", "name: a\nticks: 5\nticks: 6\n", "duplicate key 'ticks'"),
    ("bomb.yaml", _alias_bomb(), "expands to more than"),
    ("recursive.yaml", "name: &a [x, *a]\n", "contains itself"),
    ("deep.yaml", "name: " + "[" * 500 + "]" * 500 + "\n", "nested more than"),
    ("extends_missing.yaml", "extends: nowhere.yaml\n", "no such scenario file"),
    ("extends_number.yaml", "extends: 5\n", "must be a path"),
    ("extends_self.yaml", "extends: extends_self.yaml\n", "circular extends"),
]


@pytest.mark.parametrize(("name", "content", "text"), BAD_FILES)
def test_bad_files_give_one_line_naming_the_file(tmp_path, name, content, text):
    path = _write(tmp_path, name, content)
    started = time.perf_counter()
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = one_line(info.value)
    assert name in message and text in message, message
    assert time.perf_counter() - started < 5  # an alias bomb must not expand


def test_yaml_anchors_and_aliases_still_work(tmp_path):
    events = (
        "events:\n  - {at: 2, name: a, demand_shock: &shock {multiplier: 1.5}}\n"
        "  - {at: 4, name: b, demand_shock: *shock}\n"
    )
    path = _write(tmp_path, "anchors.yaml", SMALL.read_text() + events)
    scenario = load_scenario(path)
    assert scenario.events[0].demand_shock == scenario.events[1].demand_shock


def test_huge_missing_and_folder_paths(tmp_path):
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as f:  # sparse: 5 MB + 1 byte of nothing
        f.truncate(5_000_001)
    for path, text in (
        (huge, "larger than"),
        (tmp_path / "missing.yaml", "no such scenario file"),
        (tmp_path, "is a folder"),
    ):
        with pytest.raises(ScenarioError, match=text):
            load_scenario(path)


# ------------------------------------------------------------------ the CLI


@pytest.fixture
def abm(capsys, keep_sigterm):
    """The ``abm`` command in-process: (exit status, stderr lines)."""

    def call(*args):
        status = abm_cli.main([*map(str, args), "--no-progress"])
        return status, capsys.readouterr().err.strip().splitlines()

    return call


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--seed", "-1"], "--seed = -1"),
        (["--ticks", "-5"], "--ticks = -5"),
        (["--set", "mines.0.capacity_t_per_yr=.inf"], "mines.0.capacity_t_per_yr = inf"),
        (["--set", "name=../escape"], "name = '../escape'"),
        (["--set", "events=[{at: 999}]"], "events.0.at = 999"),
        (["--set", "policies.tariffs.0.rate=0.1"], "policies.tariffs = {"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, abm, args, text):
    out = tmp_path / "runs"
    status, lines = abm("run", SMALL, "--out", out, *args)
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith("abm: error:") and text in lines[0], lines
    assert not out.exists()


@pytest.mark.parametrize(("name", "content", "text"), BAD_FILES)
def test_cli_bad_files_exit_2(tmp_path, abm, name, content, text):
    path = _write(tmp_path, name, content)
    status, lines = abm("run", path, "--out", tmp_path / "runs")
    assert status == 2 and len(lines) == 1 and text in lines[0], lines
    assert not (tmp_path / "runs").exists()


def test_cli_out_that_is_a_file_exits_2(tmp_path, abm):
    target = _write(tmp_path, "not_a_folder", "x")
    status, lines = abm("run", SMALL, "--out", target)
    assert status == 2 and "--out" in lines[0] and "not a folder" in lines[0]


@pytest.fixture
def keep_sigterm():
    """``abm run`` in-process installs a SIGTERM handler; put pytest's back afterwards."""
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


def _break_at(monkeypatch, tick: int, action) -> None:
    """Make the model's state go wrong just before ``tick`` (after warm-up)."""
    original = RareEarthModel.step

    def step(self):
        if not self.warming_up and self.tick == tick - 1:
            action(self)
        original(self)

    monkeypatch.setattr(RareEarthModel, "step", step)


def test_failing_run_leaves_a_failed_manifest_and_no_complete_table(tmp_path, monkeypatch, abm):
    def poison(model):
        model.world.stocks.qty_t[0] = np.nan

    _break_at(monkeypatch, 5, poison)
    status, lines = abm("run", SMALL, "--ticks", 12, "--out", tmp_path)
    assert status == 1
    assert len(lines) == 1 and "failed at tick 5" in lines[0], lines
    (folder,) = tmp_path.iterdir()
    names = {p.name for p in folder.iterdir()}
    assert names == {"manifest.json", "config.yaml", "metrics.partial.parquet"}
    assert not names & COMPLETE_FILES
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["failed_at_tick"] == 5
    assert "InvariantError" in manifest["error"] and "qty_t = nan" in manifest["error"]
    assert manifest["ticks"] == 12 and manifest["traceback"]
    partial = pd.read_parquet(folder / "metrics.partial.parquet")
    assert list(partial.index) == [0, 1, 2, 3, 4]  # the ticks before the failure
    # the failed run's config reproduces it
    assert load_scenario(folder / "config.yaml").name == "small"


def test_ctrl_c_mid_run_writes_nothing_and_exits_130(tmp_path, monkeypatch, abm):
    def interrupt(model):
        raise KeyboardInterrupt

    _break_at(monkeypatch, 7, interrupt)
    status, lines = abm("run", SMALL, "--ticks", 12, "--out", tmp_path)
    assert status == 130 and lines == ["abm: interrupted at tick 6 of 12; nothing written"]
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_the_folder_is_written_leaves_no_partial_folder(tmp_path, monkeypatch, abm):
    def interrupted_figure(result):
        raise KeyboardInterrupt

    monkeypatch.setattr(abm_plots, "summary_figure", interrupted_figure)
    status, lines = abm("run", SMALL, "--ticks", 3, "--out", tmp_path)
    assert status == 130 and lines == ["abm: interrupted; nothing written"]
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone too


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_real_signal_stops_abm_run_cleanly(tmp_path, signum):
    out = tmp_path / "runs"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "abm.cli", "run", str(SMALL), "--ticks", "100000"),
            *("--set", "ticks=100000", "--out", str(out)),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    # wait until the run is under way: tqdm's progress bar reports ticks on stderr
    seen = ""
    while "tick" not in seen:
        seen += proc.stderr.read(1)
        assert proc.poll() is None, seen
    proc.send_signal(signum)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, seen + rest
    assert "nothing written" in rest and "Traceback" not in rest
    assert list(out.iterdir()) == []


def test_run_reports_tick_of_failure_and_interruption(monkeypatch):
    def leak_money(model):
        model.accounts["transport"] += 1e6

    _break_at(monkeypatch, 4, leak_money)
    with pytest.raises(RunFailed) as info:
        run(SMALL, seed=0, ticks=8)
    assert info.value.tick == 4 and isinstance(info.value.__cause__, InvariantError)
    assert len(info.value.metrics) == 4

    def interrupt(model):
        raise KeyboardInterrupt

    _break_at(monkeypatch, 2, interrupt)
    with pytest.raises(KeyboardInterrupt) as stop:
        run(SMALL, seed=0, ticks=8)
    assert isinstance(stop.value, RunInterrupted) and stop.value.tick == 1


# ------------------------------------------------------------------ atomic run folders


def test_run_folders_are_atomic_and_never_overwritten(tmp_path, monkeypatch):
    result = run(SMALL, seed=1, ticks=2)
    started = datetime(2026, 1, 1, tzinfo=UTC)
    first = write_run(result, tmp_path, started)
    # a second run started in the same second, even if it chose the same name, is kept apart
    chosen = new_run_dir(tmp_path, "small", started)
    monkeypatch.setattr(abm_runs, "new_run_dir", lambda *args: (first, chosen[1]))
    second = write_run(result, tmp_path, started)
    assert second != first and second.name.startswith(first.name)
    for folder in (first, second):
        assert COMPLETE_FILES <= {p.name for p in folder.iterdir()}
    # a failure while writing leaves nothing behind, not even the temporary folder
    monkeypatch.undo()

    def broken_figure(result):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(abm_plots, "summary_figure", broken_figure)
    with pytest.raises(OSError):
        write_run(result, tmp_path, started)
    assert {p.name for p in tmp_path.iterdir()} == {first.name, second.name}


def test_run_folder_names_cannot_leave_the_output_folder(tmp_path):
    scenario = load_scenario(SMALL)
    started = datetime(2026, 1, 1, tzinfo=UTC)
    for name in ("../escape", "/abs", "..", ".", "a/b", ""):
        scenario.name = name  # a scenario changed in code is not revalidated
        with pytest.raises(ScenarioError, match="not a safe run folder name"):
            scenario_folder = new_run_dir(tmp_path, scenario.name, started)
            assert scenario_folder is None
    final, tmp = new_run_dir(tmp_path, "ok.name-1", started)
    assert final.parent == tmp.parent == tmp_path


# ------------------------------------------------------------------ invariants in the model


def _model() -> RareEarthModel:
    model = RareEarthModel(build_scenario(tiny_world()), rng=0)
    model.step()
    return model


def _mine_stock_row(model) -> int:
    return int(model.world.producers.output_rows[0, 0])


BREAKS = [
    # (what goes wrong, the quantity the error names, the agent it names)
    (lambda m: m.world.stocks.qty_t.__setitem__(_mine_stock_row(m), np.nan), "qty_t", "'mine'"),
    (lambda m: m.world.stocks.qty_t.__setitem__(_mine_stock_row(m), -5.0), "qty_t", "'mine'"),
    (
        lambda m: m.world.stocks.ask_usd_per_kg.__setitem__(_mine_stock_row(m), np.inf),
        "ask_usd_per_kg",
        "'mine'",
    ),
    (
        lambda m: m.world.stocks.ask_usd_per_kg.__setitem__(_mine_stock_row(m), 0.0),
        "ask_usd_per_kg",
        "'mine'",
    ),
    (
        lambda m: m.world.producers.capacity_t_per_yr.__setitem__(1, -1.0),
        "capacity_t_per_yr",
        "'sep'",
    ),
    (
        lambda m: m.world.buyers.cash_usd_million.__setitem__(0, np.nan),
        "cash_usd_million",
        "'user'",
    ),
    (lambda m: m.world.transit_t.__setitem__((0, 0), np.inf), "in_transit_t", "'mine'"),
    (
        lambda m: m.world.stocks.attrs.__setitem__(
            (_mine_stock_row(m), m.world.layout.touched_cn), 1.5
        ),
        "touched-China share",
        "'mine'",
    ),
    (
        lambda m: setattr(m, "mined_t_total", m.mined_t_total + 50.0),
        "mass_balance_error_t",
        "world",
    ),
    (
        lambda m: m.accounts.__setitem__("tariff_revenue", 1e3),
        "money_balance_error_usd_million",
        "world",
    ),
]


@pytest.mark.parametrize(("breakage", "quantity", "agent"), BREAKS)
def test_a_broken_invariant_names_tick_agent_and_quantity(breakage, quantity, agent):
    model = _model()
    invariants.check(model)  # whole before
    breakage(model)
    with pytest.raises(InvariantError) as info:
        invariants.check(model)
    message = one_line(info.value)
    assert message.startswith("tick 1: ") and quantity in message and agent in message, message
    assert info.value.tick == 1 and info.value.quantity == quantity


def test_the_model_checks_its_invariants_every_tick():
    model = _model()
    model.world.stocks.qty_t[_mine_stock_row(model)] = np.nan
    with pytest.raises(InvariantError, match=r"^tick 2: agent 'mine' .*qty_t = nan"):
        model.step()
    quiet = _model()
    quiet.check_invariants = False  # opt out: the same state then runs on silently
    quiet.world.stocks.qty_t[_mine_stock_row(quiet)] = np.nan
    quiet.step()


def test_provenance_shares_that_do_not_sum_to_one_are_caught():
    model = _model()
    s = model.world.stocks
    held = int(np.flatnonzero(s.qty_t > 0)[0])
    s.attrs[held, : model.world.layout.n_origin] *= 0.5  # half the mass has no origin
    with pytest.raises(InvariantError, match=r"provenance shares = 0\.5: sum is not 1"):
        invariants.check(model)


# ------------------------------------------------------------------ extreme but valid scenarios

ZERO_CAPACITY = [f"mines.{i}.capacity_t_per_yr=0" for i in range(2)] + [
    f"processors.{i}.capacity_t_per_yr=0" for i in range(4)
]
ALL_BUYERS = range(4)
EXTREMES = {
    "all capacity zero": [*ZERO_CAPACITY, "projects=[]"],
    "all capacity zero, projects can enter": ZERO_CAPACITY,
    "export quota zero": [
        "policies.export_controls=[{product: any, destination: any, quota_t_per_yr: 0}]"
    ],
    "export quota unlimited": ["policies.export_controls=[{product: any, destination: any}]"],
    "mining and separation quotas zero": [
        "mining_quota_t_per_yr={CN: 0, AU: 0}",
        "separation_quota_t_per_yr={CN: 0, US: 0}",
    ],
    "mining quota 1e12": ["mining_quota_t_per_yr={CN: 1e12}"],
    "subsidy floor 1e6": [
        "policies.price_floors=[{product: oxide:NdPr, level_usd_per_kg: 1e6, "
        "mechanism: price_gap_subsidy, upside_share: 1}]"
    ],
    "border floor 1e6": [
        "policies.price_floors=[{product: magnet, level_usd_per_kg: 1e6, "
        "mechanism: border_adjusted}]"
    ],
    "offtake floor 1e6": [
        "policies.price_floors=[{product: oxide:NdPr, level_usd_per_kg: 1e6, "
        "mechanism: offtake, offtake_t_per_yr: 1e6}]"
    ],
    "elasticity zero": [f"buyers.{i}.elasticity=0" for i in ALL_BUYERS],
    "demand zero": [f"buyers.{i}.base_demand_t_per_yr=0" for i in ALL_BUYERS],
    "demand 1e12": [f"buyers.{i}.base_demand_t_per_yr=1e12" for i in ALL_BUYERS],
    "capacity 1e12": ["mines.0.capacity_t_per_yr=1e12", "processors.0.capacity_t_per_yr=1e12"],
    "costs zero, full loss tolerance": [
        "mines.0.cash_cost_usd_per_kg=0",
        "processors.0.processing_cost_usd_per_kg=0",
        "market.loss_tolerance=1",
        "market.price_adjustment=2",
    ],
    "prices 1e-6": [
        "initial_prices_usd_per_kg={concentrate: 1e-6, oxide:NdPr: 1e-6, oxide:other: 1e-6, "
        "magnet: 1e-6}",
        *[f"buyers.{i}.reference_price_usd_per_kg=1e-6" for i in ALL_BUYERS],
        *[f"buyers.{i}.reservation_price_usd_per_kg=1e-5" for i in ALL_BUYERS],
    ],
    "one tick a year": ["ticks_per_year=1", "ticks=30"],
    "daily ticks": ["ticks_per_year=365"],
    "no warm-up": ["market.warmup_ticks=0"],
    "logit beta 1e9 and 1 round": ["market.logit_beta=1e9", "market.rationing_rounds=1"],
    "logit beta 1e-9": ["market.logit_beta=1e-9"],
    "price noise 1": ["market.price_noise=1"],
    "tariffs and duties 10x": [
        "policies.tariffs=[{origin: any, destination: any, rate: 10}]",
        "policies.export_duties=[{product: any, rate: 10}]",
    ],
    "full compliance, premium 5": [
        "policies.compliance.min_compliant_share=1",
        *[f"buyers.{i}.security_premium_share=5" for i in ALL_BUYERS],
    ],
    "huge reserve": [
        "policies.reserve={product: oxide:NdPr, loan_usd_million: 1e9, "
        "buy_trigger_usd_per_kg: 1e6, release_trigger_usd_per_kg: 2e6, target_months: 1000}"
    ],
    "strategic pricing at 1% of cost": [
        "policies.china_pricing={mode: strategic, trigger_non_cn_share: 0, "
        "export_price_fraction: 0.01, budget_usd_million: 1e9}"
    ],
    "licences never granted": [
        "policies.export_controls=[{product: any, approval_probability: 0, delay_months: 24}]"
    ],
    "every producer out for a year": [
        "events=[{at: 1, duration_months: 12, outage: "
        "[cn_mine, au_mine, cn_sep, us_sep, cn_magnet, jp_magnet]}]"
    ],
    "all trade cut": ["events=[{at: 1, transport_cut: {between: any, and: any}}]"],
    "demand shocks 0 then 10": [
        "events=[{at: 1, duration_months: 6, demand_shock: {multiplier: 0}}, "
        "{at: 10, demand_shock: {multiplier: 10}}]"
    ],
    "expansion every month": [
        "investment.interval_months=1",
        "investment.expansion_hurdle=0",
        "investment.utilisation_to_expand=0",
        "investment.expansion_share=1",
        "investment.expansion_lead_time_years=0",
    ],
    "no stock targets": [
        "market.stock_cover_months=1e-9",
        "market.input_cover_months=0",
        "market.order_adjust_months=1e-9",
        *[f"buyers.{i}.inventory_target_months=0" for i in ALL_BUYERS],
    ],
}


@pytest.mark.parametrize("overrides", EXTREMES.values(), ids=EXTREMES.keys())
def test_extreme_but_valid_scenarios_keep_every_invariant(overrides):
    scenario = load_scenario(SMALL, ["ticks=36", *overrides])
    model = run_checked(RareEarthModel(scenario, rng=1), min(scenario.ticks, 36))
    frame = model.datacollector.get_model_vars_dataframe()
    numbers = frame.select_dtypes("number").to_numpy()
    assert not np.isinf(numbers).any()  # NaN is allowed in metrics (a price with no trade)


def test_a_single_agent_of_each_kind_for_one_tick_and_for_ten_years():
    one = run(build_scenario(tiny_world(magnet=True, ticks=1)), seed=0)
    assert len(one.metrics) == 2  # tick 0 and tick 1
    check_invariants(one.model)
    model = run_checked(RareEarthModel(build_scenario(tiny_world(magnet=True)), rng=0), 120)
    assert model.consumed_reo_t_total > 0


def test_ten_thousand_ticks_keep_every_invariant():
    # 833 years of a tiny world, with the model's own invariant check on every tick
    long = run(build_scenario(tiny_world(ticks=10_000)), seed=0)
    check_invariants(long.model)
    assert len(long.metrics) == 10_001
    numbers = long.metrics.select_dtypes("number").to_numpy()
    assert not np.isinf(numbers).any()
    assert long.model.consumed_reo_t_total > 0
    assert abs(long.model.mass_balance_error_t()) <= 1e-9 * long.model.mined_t_total


# ------------------------------------------------------------------ bad sweep files

SWEEP = {
    "name": "robust",
    "scenario": str(SMALL),
    "ticks": 2,
    "parameters": {"logit_beta": {"values": [4, 8]}},
}
BAD_SWEEPS = [
    ({"colour": "red"}, "colour = 'red': unknown key"),
    ({"name": "../escape"}, "name = '../escape'"),
    ({"replicates": 0}, "replicates = 0"),
    ({"design": "random"}, "design = 'random'"),
    ({"parameters": {}}, "parameters = {}"),
    ({"parameters": {"no_such_lever": {"values": [1]}}}, "no_such_lever"),
    ({"parameters": {"logit_beta": {"values": [-4]}}}, "logit_beta"),
    ({"parameters": {"logit_beta": {"values": [".inf"]}}}, "logit_beta"),
    ({"scenario": "nowhere.yaml"}, "scenario = 'nowhere.yaml': no such scenario file"),
    ({"set": {"market.logit_beta": float("inf")}}, "market.logit_beta"),
    ({"set": {"mines.0.capacity_t_per_yr": True}}, "mines.0.capacity_t_per_yr"),
]


@pytest.mark.parametrize(("change", "text"), BAD_SWEEPS)
def test_cli_bad_sweep_files_exit_2_and_write_nothing(tmp_path, abm, change, text):
    path = _write(tmp_path, "sweep.yaml", yaml.safe_dump({**SWEEP, **change}))
    out = tmp_path / "runs"
    status, lines = abm("sweep", path, "--workers", 0, "--out", out)
    assert status == 2 and len(lines) == 1 and lines[0].startswith("abm: error:"), lines
    assert text in lines[0], lines
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize(("name", "content", "text"), BAD_FILES[:10])
def test_cli_bad_sweep_file_formats_exit_2(tmp_path, abm, name, content, text):
    path = _write(tmp_path, name, content)
    status, lines = abm("sweep", path, "--workers", 0, "--out", tmp_path / "runs")
    assert status == 2 and len(lines) == 1 and name in lines[0], lines
    assert not (tmp_path / "runs").exists()
