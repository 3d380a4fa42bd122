"""Scenario loading: extends, overrides, and one-line errors naming the key and value."""

import pytest
import yaml

from abm.scenario import ScenarioError, load_scenario
from tests.worlds import CONFIGS

SMALL = CONFIGS / "tests" / "small.yaml"


def test_extends_merges_mappings_and_overrides_win(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(
        yaml.safe_dump({"extends": str(SMALL), "name": "child", "market": {"logit_beta": 3.0}})
    )
    s = load_scenario(child, ["market.rationing_rounds=5", "mines.cn_mine.capacity_t_per_yr=1e3"])
    assert s.name == "child"
    assert s.market.logit_beta == 3.0 and s.market.rationing_rounds == 5
    assert s.market.price_adjustment == load_scenario(SMALL).market.price_adjustment
    assert s.mines[0].capacity_t_per_yr == 1000.0
    by_index = load_scenario(SMALL, ["mines.0.cash_cost_usd_per_kg=7"])
    assert by_index.mines[0].cash_cost_usd_per_kg == 7


BAD = [
    (["colour=red"], "colour", "unknown key"),
    (["ticks=many"], "ticks", "valid integer"),
    (["mines.cn_mine.capacity_t_per_yr=-5"], "mines.0.capacity_t_per_yr", "-5"),
    (["mines.0.composition={NdPr: 0.5, other: 0.4}"], "mines.0.composition", "not 1"),
    (["buyers.us_ev.product=oxide:DyTb"], "buyers.1.product", "oxide:DyTb"),
    (["buyers.us_ev.country=XX"], "buyers.1.country", "XX"),
    (["mines.nosuchmine.capacity_t_per_yr=1"], "mines.nosuchmine", "no list item"),
    (["noequals"], "--set", "key.path=value"),
]


@pytest.mark.parametrize(("overrides", "key", "text"), BAD)
def test_bad_scenarios_give_one_line_errors_naming_key_and_value(overrides, key, text):
    with pytest.raises(ScenarioError) as info:
        load_scenario(SMALL, overrides)
    message = str(info.value)
    assert "\n" not in message
    assert key in message and text in message


def test_buyer_with_no_possible_supplier(tmp_path):
    data = yaml.safe_load(SMALL.read_text())
    data["processors"] = [p for p in data["processors"] if p["stage"] != "magnet"]
    data["magnet"] = {"recipe_t_per_t": {"NdPr": 0.3}}
    path = tmp_path / "nomagnets.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ScenarioError, match=r"buyers\.0\.product = 'magnet'.*no possible supplier"):
        load_scenario(path)


def test_files_that_are_not_yaml_mappings(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ScenarioError, match="must be a YAML mapping"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "missing.yaml")


def test_yaml_tags_cannot_execute_code(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(bad)


def _containers(node, seen=None):
    """Ids of every dict, list and model reachable from ``node``."""
    from pydantic import BaseModel

    seen = set() if seen is None else seen
    if isinstance(node, BaseModel):
        seen.add(id(node))
        for value in node.__dict__.values():
            _containers(value, seen)
    elif isinstance(node, dict | list):
        seen.add(id(node))
        for value in node.values() if isinstance(node, dict) else node:
            _containers(value, seen)
    return seen


@pytest.mark.parametrize("config", ["baseline", "export_controls_2025", "tests/small"])
def test_building_a_scenario_neither_changes_nor_keeps_the_callers_data(config):
    """The data is copied before defaults merge into it (entry lists one level deep only)."""
    import copy

    from abm.scenario import _resolve, build_scenario

    data = _resolve(CONFIGS / f"{config}.yaml")
    tariff = {"origin": "china", "destination": "alliance", "product": "magnet", "rate": 0.1}
    data["events"] = [{"at": 3, "set": {"policies.tariffs": [tariff]}}]
    before = copy.deepcopy(data)
    scenario = build_scenario(data)
    assert data == before
    assert not _containers(scenario) & _containers(data)
    kept = scenario.events[0].set["policies.tariffs"]  # a value of no declared type
    assert kept == [tariff] and kept is not data["events"][0]["set"]["policies.tariffs"]
