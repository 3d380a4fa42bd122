"""Property-based fuzzing (issue 7): bad input never escapes as anything but a clean error, and
every valid world keeps every invariant.

- Mutated scenarios (wrong types, bad values, unknown keys, deleted keys, swapped references):
  either a one-line ``ScenarioError`` naming the file, or a model that runs and keeps every
  invariant.
- Garbage files (random text, random bytes, random YAML documents) and random ``--set``
  strings: a ``ScenarioError`` or a valid scenario, never another exception.
- Random valid worlds (``tests/worlds.py``) under random policies and events: every invariant
  on every tick (``tests/test_accounting.py`` at 1e-9, and the model's own check); the only
  error allowed is a buyer or plant cut off from all supply by the standing policies.

Hypothesis runs derandomized (the same examples on every run, no example database) with no
deadline, so CI is reproducible; the example counts below are the numbers of cases tried.
"""

from __future__ import annotations

import copy
import re

import yaml
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from abm import RareEarthModel
from abm.scenario import ScenarioError, build_scenario, load_scenario
from tests.test_accounting import run_checked
from tests.worlds import CONFIGS, small_worlds

SMALL = CONFIGS / "tests" / "small.yaml"
BASE = yaml.safe_load(SMALL.read_text())
BASE["ticks"], BASE["market"] = 6, {"warmup_ticks": 2}  # short runs: many cases, little time
# "<file>: <key path> = <value>: <problem>", on one line
ERROR_LINE = re.compile(r"^fuzz\.yaml: [^\n]+ = [^\n]*: [^\n]+$")
SUPPLY_CUT = ("no possible supplier", "no mine can sell", "no separation plant can sell")


def fuzz(max_examples: int):
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


def assert_clean(err: ScenarioError) -> None:
    message = str(err)
    assert ERROR_LINE.match(message), message
    assert len(message) < 500


# ------------------------------------------------------------------ mutated scenarios


def _paths(node, prefix=()):
    """Every key path in nested data (not the root)."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        yield (*prefix, key)
        if isinstance(value, dict | list) and value:
            yield from _paths(value, (*prefix, key))


PATHS = sorted(_paths(BASE), key=str)
NAMES = ["cn_mine", "au_mine", "cn_sep", "us_sep", "jp_magnet", "us_ev", "au_new_mine", "nobody"]
REFERENCES = ["CN", "US", "JP", "AU", "XX", "alliance", "china", "any", "NdPr", "other", "Sm"]
REFERENCES += ["concentrate", "oxide:NdPr", "oxide:other", "magnet", "oxide:Sm", "2025-06"]
GARBAGE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**15), 10**15),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e3, 1e3),
    st.text(max_size=12),
    st.sampled_from(REFERENCES + NAMES + ["", "-1", "1e3", "nan", "yes", "2025-13"]),
    st.lists(st.one_of(st.integers(-5, 5), st.sampled_from(REFERENCES)), max_size=3),
    st.dictionaries(st.sampled_from([*REFERENCES, "name", "rate"]), st.integers(-5, 5), max_size=3),
)


MUTATIONS = ["replace", "replace", "delete", "unknown", "empty", "scale", "scale", "scale", "swap"]
COUNTRIES = list(BASE["countries"])


def _parent(data, path):
    node = data
    for key in path[:-1]:
        node = node[key]
    return node


@st.composite
def mutated_scenarios(draw) -> tuple[dict, list[str]]:
    data = copy.deepcopy(BASE)
    done = []
    for _ in range(draw(st.integers(1, 3))):
        live = [p for p in PATHS if _exists(data, p)]
        path = draw(st.sampled_from(live))
        parent, key = _parent(data, path), path[-1]
        kind = draw(st.sampled_from(MUTATIONS))
        value = parent[key]
        if kind == "scale" and isinstance(value, int | float) and not isinstance(value, bool):
            parent[key] = type(value)(value * draw(st.sampled_from([0, 0.1, 0.5, 2, 10, 1000])))
        elif kind == "swap" and isinstance(value, str) and value in COUNTRIES:
            parent[key] = draw(st.sampled_from(COUNTRIES))
        elif kind == "replace":
            parent[key] = draw(GARBAGE)
        elif kind == "delete":
            del parent[key]
        elif kind == "unknown" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["colour", "capacity", "Name", "tick", "1"]))] = 1
        elif kind == "empty":
            parent[key] = type(parent[key])() if isinstance(parent[key], dict | list) else ""
        done.append(f"{kind} {'.'.join(map(str, path))}")
    return data, done


def _exists(data, path) -> bool:
    node = data
    for key in path:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return False
    return True


@fuzz(300)
@given(mutated_scenarios())
def test_mutated_scenarios_fail_cleanly_or_keep_every_invariant(case):
    data, mutations = case
    note(f"mutations: {mutations}")
    try:
        scenario = build_scenario(data, "fuzz.yaml")
    except ScenarioError as err:
        assert_clean(err)
        event("rejected with a ScenarioError")
        return
    event("valid: ran, every invariant kept")
    run_checked(RareEarthModel(scenario, rng=0), scenario.ticks)


# ------------------------------------------------------------------ garbage files and --set

KEYS = ["name", "ticks", "mines", "buyers", "market", "policies", "events", "extends", "<<"]
yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)


@fuzz(100)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_garbage_files_give_a_clean_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("garbage") / "fuzz.yaml"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    try:
        load_scenario(path)
    except ScenarioError as err:
        assert "\n" not in str(err) and "fuzz.yaml" in str(err)
    else:
        raise AssertionError("garbage loaded as a scenario")


@fuzz(100)
@given(yaml_values)
def test_random_yaml_documents_give_a_clean_error(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("documents") / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        load_scenario(path)
    except ScenarioError as err:
        assert "\n" not in str(err) and "fuzz.yaml" in str(err)
    else:
        raise AssertionError("a random document loaded as a scenario")


override_texts = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda path, sep, value: f"{path}{sep}{value}",
        st.sampled_from([".".join(map(str, p)) for p in PATHS] + ["", ".", "a..b", "x.y.z"]),
        st.sampled_from(["=", "=", "==", " = ", ""]),
        st.one_of(st.sampled_from(["[", "{a: ", "!!python/name:os.system", "*x", "&a"]))
        | GARBAGE.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
    ),
)


@fuzz(200)
@given(override_texts)
def test_random_set_overrides_give_a_clean_error_or_a_valid_scenario(text):
    try:
        load_scenario(SMALL, [text])
    except ScenarioError as err:
        assert "\n" not in str(err)
        event("rejected with a ScenarioError")
    else:
        event("valid")


# ------------------------------------------------------------------ random worlds and policies


@st.composite
def worlds_with_policies(draw) -> dict:
    """A random valid world (tests/worlds.py) under random policies, shocks and events."""
    raw = draw(small_worlds())
    raw["ticks"] = 18
    countries = list(raw["countries"])
    parties = [*countries, "alliance", "china", "other", "any"]
    sold = [f"oxide:{e}" for e in raw["elements"]] + (["magnet"] if raw["magnet"] else [])
    products = ["any", "concentrate", *sold]
    rate = st.floats(0, 10)
    tariff = st.fixed_dictionaries(
        {
            "origin": st.sampled_from(parties),
            "destination": st.sampled_from(parties),
            "product": st.sampled_from(products),
            "rate": rate,
        }
    )
    control = st.fixed_dictionaries(
        {
            "product": st.sampled_from(products),
            "destination": st.sampled_from(parties),
            "quota_t_per_yr": st.one_of(st.none(), st.just(0.0), st.floats(0, 1e5)),
            "approval_probability": st.floats(0, 1),
            "delay_months": st.integers(0, 24),
        }
    )
    floor = st.fixed_dictionaries(
        {
            "product": st.sampled_from(sold),
            "level_usd_per_kg": st.one_of(st.floats(1, 500), st.just(1e6)),
            "mechanism": st.sampled_from(["price_gap_subsidy", "border_adjusted", "offtake"]),
            "upside_share": st.floats(0, 1),
            "offtake_t_per_yr": st.floats(0, 1e4),
        }
    )
    buy = draw(st.floats(1, 1e3))
    policies = {
        "tariffs": draw(st.lists(tariff, max_size=2)),
        "export_duties": draw(
            st.lists(
                st.fixed_dictionaries({"product": st.sampled_from(products), "rate": rate})
            ).map(lambda rules: rules[:1])
        ),
        "export_controls": draw(st.lists(control, max_size=2)),
        "price_floors": draw(st.lists(floor, max_size=2)),
        "compliance": {
            "min_compliant_share": draw(st.sampled_from([0.0, 0.5, 1.0])),
            "ban_allied_mines_to_china": draw(st.booleans()),
            "de_minimis_share": draw(st.floats(0, 1)),
        },
        "china_pricing": {
            "mode": draw(st.sampled_from(["market", "strategic"])),
            "trigger_non_cn_share": draw(st.floats(0, 1)),
            "export_price_fraction": draw(st.floats(0.01, 2)),
        },
    }
    if draw(st.booleans()):
        policies["reserve"] = {
            "owner": draw(st.sampled_from(parties[:-1])),
            "product": draw(st.sampled_from(sold)),
            "loan_usd_million": draw(st.floats(0, 1e4)),
            "buy_trigger_usd_per_kg": buy,
            "release_trigger_usd_per_kg": buy * draw(st.floats(1.01, 10)),
            "target_months": draw(st.floats(0, 24)),
        }
    # the reserve's stock holds one product; offtake floors buy into it (scenario validation)
    held = policies.get("reserve", {}).get("product")
    for rule in policies["price_floors"]:
        if rule["mechanism"] == "offtake":
            held = held or rule["product"]
            rule["product"] = held
    raw["policies"] = policies
    producers = [p["name"] for p in raw["mines"] + raw["processors"] + raw["projects"]]
    event = st.fixed_dictionaries(
        {"at": st.integers(0, raw["ticks"])},
        optional={
            "duration_months": st.integers(1, 12),
            "outage": st.lists(st.sampled_from(producers), max_size=3),
            "demand_shock": st.fixed_dictionaries(
                {"multiplier": st.floats(0, 10), "where": st.sampled_from(parties)}
            ),
            "transport_cut": st.fixed_dictionaries(
                {"between": st.sampled_from(parties), "and": st.sampled_from(parties)}
            ),
            "set": st.fixed_dictionaries(
                {"policies.tariffs": st.lists(tariff, max_size=1)},
                optional={"policies.export_controls": st.lists(control, max_size=1)},
            ),
        },
    )
    raw["events"] = draw(st.lists(event, max_size=2))
    return raw


@fuzz(150)
@given(worlds_with_policies())
def test_random_worlds_under_random_policies_keep_every_invariant(raw):
    note(f"policies: {raw['policies']}; events: {raw['events']}")
    try:
        scenario = build_scenario(raw, "fuzz.yaml")
    except ScenarioError as err:  # only a world the standing policies cut off from supply
        assert_clean(err)
        assert any(text in str(err) for text in SUPPLY_CUT), str(err)
        event("rejected: the standing policies cut off supply")
        return
    event("ran, every invariant kept")
    run_checked(RareEarthModel(scenario, rng=0), raw["ticks"])
