"""The main policy levers and uncertain parameters by flat name, and applying overrides.

A *lever* is a flat keyword (``tariff_rate``, ``floor_level_usd_per_kg``, ``logit_beta`` …)
that changes one thing in a scenario, the way a researcher would say it. It is what
``RareEarthModel(tariff_rate=0.25)``, a sweep's ``parameters:``, ``abm run --set tariff_rate=0.25``
and the dashboard's sliders share. :data:`LEVERS` lists them with a one-line doc and unit;
``None`` (the default of every lever) means "as the scenario says".

Policy levers change the policy **wherever the scenario states it**: at the start and in every
dated event that sets it (an event keeps its date; only the level changes). A list policy
(tariffs, floors, quotas) that the scenario has nowhere is added from the start.

Any other scenario value is reached by a dotted path (``market.price_noise``,
``mines.Bayan_Obo.capacity_t_per_yr``), exactly as ``--set`` does. :func:`resolve` applies
dotted paths first, then levers in the order of :data:`LEVERS`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abm.scenario import (
    Scenario,
    ScenarioError,
    _list_index,
    _resolve,
    _set_path,
    build_scenario,
    parse_override,
)

Data = dict[str, Any]


@dataclass(frozen=True)
class Lever:
    """One flat lever: what it changes, its unit, and how to apply it to scenario data."""

    name: str
    doc: str
    unit: str
    changes: str  # what it changes in the scenario, as dotted paths
    kind: str  # "float", "choice" or "countries"
    apply: Callable[[Data, Any], None]
    low: float | None = None  # a sensible range for sliders and sweeps (not enforced)
    high: float | None = None
    choices: tuple[str, ...] = ()


# ------------------------------------------------------------------ finding settings


def _walk(node: Any, parts: list[str], make_parents: bool) -> tuple[dict, str] | None:
    """The mapping and key that hold ``parts`` under ``node`` (None where a parent is None)."""
    for part in parts[:-1]:
        if not isinstance(node, dict):
            return None
        if node.get(part) is None:
            if not make_parents or part in node:
                return None
            node[part] = {}
        node = node[part]
    return (node, parts[-1]) if isinstance(node, dict) else None


def _event_settings(data: Data) -> Iterable[tuple[int, dict[str, Any], str]]:
    """Every (event index, its ``set`` mapping, key) of the scenario's events."""
    for i, event in enumerate(data.get("events") or []):
        settings = event.get("set") or {}
        for key in list(settings):
            yield i, settings, key


def _slots(data: Data, path: str, make_parents: bool, lever: str) -> list[tuple[dict, str]]:
    """Where the value at ``path`` is stated: at the start and in every event setting it.

    An event that sets a parent of ``path`` (``policies.compliance: {...}``) replaces it, so
    the value is written into that mapping too. Events that set a part of the value (a key
    below ``path``) cannot be rewritten by a lever.
    """
    parts = path.split(".")
    slots = []
    start = _walk(data, parts, make_parents)
    if start is not None:
        slots.append(start)
    for i, settings, key in _event_settings(data):
        if key == path:
            slots.append((settings, key))
        elif path.startswith(key + "."):
            inner = _walk(settings[key], parts[len(key.split(".")) :], make_parents)
            if inner is not None:
                slots.append(inner)
        elif key.startswith(path + "."):
            raise ScenarioError(
                lever, key, f"events.{i} sets part of {path}; use a dotted path instead"
            )
    return slots


def _set_everywhere(path: str, make_parents: bool = True) -> Callable[[Data, Any], None]:
    def apply(data: Data, value: Any) -> None:
        for node, key in _slots(data, path, make_parents, path):
            node[key] = value

    return apply


def _entries(
    data: Data, path: str
) -> tuple[list[list[Any]], list[tuple[dict, str, Data, str | None]]]:
    """Every list of a list policy (start and events), and every event setting of one entry.

    Returns the lists, and ``(settings, key, entry, field)`` for event keys ``path.<item>``
    (the entry itself; field None) and ``path.<item>.<field>`` (the initial entry they
    address, with the field's new value).
    """
    initial = _walk(data, path.split("."), make_parents=False)
    start = initial[0].get(initial[1]) if initial else None
    lists = [start] if isinstance(start, list) else []
    fields = []
    for i, settings, key in _event_settings(data):
        value = settings[key]
        if key == path or path.startswith(key + "."):
            inner = value if key == path else _walk(value, path[len(key) + 1 :].split("."), False)
            if isinstance(inner, tuple):
                inner = inner[0].get(inner[1])
            if isinstance(inner, list):
                lists.append(inner)
        elif key.startswith(path + "."):
            rest = key[len(path) + 1 :].split(".")
            if not isinstance(start, list):
                raise ScenarioError(key, value, f"events.{i}: no initial {path} to address")
            entry = start[_list_index(start, rest[0], f"events.{i}.set.{key}")]
            if len(rest) == 1 and isinstance(value, dict):
                fields.append((settings, key, value, None))
            elif len(rest) == 2:
                fields.append((settings, key, {**entry, rest[1]: value}, rest[1]))
            else:
                raise ScenarioError(key, value, f"events.{i}: a lever cannot rewrite this")
    return lists, fields


def _update_entries(
    data: Data, path: str, match: Callable[[Data], bool], update: Callable[[Data], None]
) -> int:
    """Apply ``update`` to every matching entry of a list policy; returns how many matched."""
    lists, fields = _entries(data, path)
    found = 0
    for items in lists:
        for entry in items:
            if isinstance(entry, dict) and match(entry):
                update(entry)
                found += 1
    for settings, key, entry, field in fields:
        if match(entry):
            update(entry)
            settings[key] = entry if field is None else entry[field]
            found += 1
    return found


def _remove_entries(data: Data, path: str, match: Callable[[Data], bool]) -> None:
    lists, fields = _entries(data, path)
    for items in lists:
        items[:] = [e for e in items if not (isinstance(e, dict) and match(e))]
    for settings, key, entry, _ in fields:
        if match(entry):
            del settings[key]


# ------------------------------------------------------------------ policy levers


def _from_china(data: Data) -> Callable[[Data], bool]:
    return lambda rule: rule.get("origin") in ("china", data.get("china", "CN"))


def _traded_products(data: Data) -> list[str]:
    oxides = [f"oxide:{e}" for e in data["elements"]]
    return [*oxides, "magnet"] if data.get("magnet") else oxides


def _tariff_rate(data: Data, rate: float) -> None:
    found = _update_entries(
        data, "policies.tariffs", _from_china(data), lambda rule: rule.update(rate=rate)
    )
    if not found and rate != 0:  # a negative rate is added, so validation names it
        data["policies"]["tariffs"].extend(
            {"origin": "china", "destination": "alliance", "product": p, "rate": rate}
            for p in _traded_products(data)
        )


def _floor_level(data: Data, level: float) -> None:
    if level == 0:
        _remove_entries(data, "policies.price_floors", lambda floor: True)
        return
    found = _update_entries(
        data, "policies.price_floors", lambda f: True, lambda f: f.update(level_usd_per_kg=level)
    )
    if not found:
        data["policies"]["price_floors"].append(
            {
                "product": f"oxide:{data['elements'][0]}",
                "level_usd_per_kg": level,
                "mechanism": "price_gap_subsidy",
            }
        )


def _floor_mechanism(data: Data, mechanism: str) -> None:
    found = _update_entries(
        data, "policies.price_floors", lambda f: True, lambda f: f.update(mechanism=mechanism)
    )
    if not found:
        raise ScenarioError(
            "floor_mechanism", mechanism, "the scenario has no price floor; set a floor level"
        )


def _reserve_slots(data: Data, lever: str, value: float) -> list[tuple[dict, str]]:
    slots = _slots(data, "policies.reserve", make_parents=False, lever=lever)
    reserves = [(node, key) for node, key in slots if isinstance(node.get(key), dict)]
    if not reserves and value:
        raise ScenarioError(lever, value, "the scenario has no strategic reserve to change")
    return reserves


def _reserve_budget(data: Data, budget: float) -> None:
    for node, key in _reserve_slots(data, "reserve_budget_usd_million", budget):
        reserve = node[key]
        loan = reserve.get("loan_usd_million", 0.0)
        private = reserve.get("private_usd_million", 0.0)
        loan_share = loan / (loan + private) if loan + private > 0 else 1.0
        reserve["loan_usd_million"] = budget * loan_share
        reserve["private_usd_million"] = budget * (1.0 - loan_share)


def _reserve_target(data: Data, months: float) -> None:
    for node, key in _reserve_slots(data, "reserve_target_months", months):
        node[key]["target_months"] = months


def _export_quota(data: Data, quota: float) -> None:
    def is_quota(rule: Data) -> bool:
        limit = rule.get("quota_t_per_yr")
        return limit is not None and limit > 0

    found = _update_entries(
        data, "policies.export_controls", is_quota, lambda r: r.update(quota_t_per_yr=quota)
    )
    if not found:  # last, so specific rules (an ore export ban) keep precedence
        data["policies"]["export_controls"].append(
            {"product": "any", "destination": "any", "quota_t_per_yr": quota}
        )


def _alliance_members(data: Data, members: Any) -> None:
    if isinstance(members, str):
        members = [m.strip() for m in members.split(",") if m.strip()]
    _set_everywhere("alliance")(data, list(members))


# ------------------------------------------------------------------ uncertain parameters


def _scale(section: str, field: str) -> Callable[[Data, float], None]:
    def apply(data: Data, factor: float) -> None:
        for entry in data.get(section) or []:
            if entry.get(field) is not None:
                entry[field] = entry[field] * factor

    return apply


def _lead_time_scale(data: Data, factor: float) -> None:
    _scale("projects", "lead_time_years")(data, factor)
    data["investment"]["expansion_lead_time_years"] *= factor


LEVERS: dict[str, Lever] = {
    lever.name: lever
    for lever in (
        Lever(
            "tariff_rate",
            "Alliance tariff on Chinese material (every oxide and magnets if none is set).",
            "share (0.25 = 25 %)",
            "policies.tariffs[origin china].rate",
            "float",
            _tariff_rate,
            0.0,
            1.0,
        ),
        Lever(
            "floor_level_usd_per_kg",
            "Price floor level for compliant material; 0 removes every floor "
            "(added on the first element's oxide as a price-gap subsidy if none is set).",
            "US$/kg",
            "policies.price_floors[*].level_usd_per_kg",
            "float",
            _floor_level,
            0.0,
            200.0,
        ),
        Lever(
            "floor_mechanism",
            "How the price floors work: price_gap_subsidy, border_adjusted or offtake.",
            "choice",
            "policies.price_floors[*].mechanism",
            "choice",
            _floor_mechanism,
            choices=("price_gap_subsidy", "border_adjusted", "offtake"),
        ),
        Lever(
            "reserve_budget_usd_million",
            "Strategic reserve budget, loan plus private capital (split kept as in the scenario).",
            "US$ million",
            "policies.reserve.loan_usd_million + private_usd_million",
            "float",
            _reserve_budget,
            0.0,
            20_000.0,
        ),
        Lever(
            "reserve_target_months",
            "Strategic reserve target stock, in months of the owner's consumption.",
            "months",
            "policies.reserve.target_months",
            "float",
            _reserve_target,
            0.0,
            24.0,
        ),
        Lever(
            "export_quota_t_per_yr",
            "China's export quota wherever it sets one (bans stay); else one cap on all exports.",
            "t product per year",
            "policies.export_controls[quota > 0].quota_t_per_yr",
            "float",
            _export_quota,
            0.0,
            100_000.0,
        ),
        Lever(
            "china_pricing_mode",
            "China's export pricing: market, or strategic below-cost pricing above the trigger.",
            "choice",
            "policies.china_pricing.mode",
            "choice",
            _set_everywhere("policies.china_pricing.mode"),
            choices=("market", "strategic"),
        ),
        Lever(
            "strategic_trigger",
            "Non-Chinese share of world separation above which strategic pricing acts.",
            "share",
            "policies.china_pricing.trigger_non_cn_share",
            "float",
            _set_everywhere("policies.china_pricing.trigger_non_cn_share"),
            0.0,
            0.5,
        ),
        Lever(
            "min_compliant_share",
            "Rules of origin: minimum compliant share of alliance buyers' supply, whole run.",
            "share",
            "policies.compliance.min_compliant_share",
            "float",
            _set_everywhere("policies.compliance.min_compliant_share"),
            0.0,
            1.0,
        ),
        Lever(
            "alliance_members",
            "Alliance member countries for the whole run (a list, or 'US,EU,JP').",
            "country codes",
            "alliance",
            "countries",
            _alliance_members,
        ),
        Lever(
            "logit_beta",
            "Buyers' price sensitivity in route choice (logit β, dimensionless).",
            "dimensionless",
            "market.logit_beta",
            "float",
            _set_everywhere("market.logit_beta"),
            2.0,
            20.0,
        ),
        Lever(
            "price_adjustment",
            "Sellers' price adjustment speed κ per tick.",
            "per tick",
            "market.price_adjustment",
            "float",
            _set_everywhere("market.price_adjustment"),
            0.02,
            0.3,
        ),
        Lever(
            "elasticity_scale",
            "Multiplies every buyer's short-run price elasticity.",
            "factor",
            "buyers[*].elasticity",
            "float",
            _scale("buyers", "elasticity"),
            0.5,
            2.0,
        ),
        Lever(
            "lead_time_scale",
            "Multiplies every project's lead time and the expansion lead time.",
            "factor",
            "projects[*].lead_time_years, investment.expansion_lead_time_years",
            "float",
            _lead_time_scale,
            0.5,
            2.0,
        ),
    )
}


# ------------------------------------------------------------------ applying overrides


def is_lever(name: str) -> bool:
    """Whether ``name`` is a flat lever (else it is a dotted path into the scenario)."""
    return name in LEVERS


def _pairs(overrides: Mapping[str, Any] | Iterable[str] | None) -> list[tuple[str, Any]]:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    if isinstance(overrides, str):
        raise TypeError("overrides must be a list of 'key=value' strings or a mapping")
    return [parse_override(text) for text in overrides]


def apply_overrides(
    data: Data, overrides: Mapping[str, Any] | Iterable[str] | None, source: str | None = None
) -> Scenario:
    """Apply dotted paths and levers to raw scenario data and validate the result.

    Args:
        data: raw scenario data (``extends:`` resolved; changed in place).
        overrides: ``{"market.logit_beta": 12, "tariff_rate": 0.25}`` or
            ``["market.logit_beta=12", "tariff_rate=0.25"]``.
        source: file name for error messages.

    Returns:
        The validated scenario.

    Raises:
        ScenarioError: naming the key or lever and the value.

    """
    pairs = _pairs(overrides)
    for key, value in pairs:
        if not is_lever(key):
            _set_path(data, key, copy.deepcopy(value))  # never share the caller's objects
    scenario = build_scenario(data, source)
    levers = dict((key, value) for key, value in pairs if is_lever(key))
    if not any(value is not None for value in levers.values()):
        return scenario
    full = scenario.model_dump(mode="python", by_alias=True)
    for name, lever in LEVERS.items():
        value = levers.get(name)
        if value is None:
            continue
        try:
            lever.apply(full, value)
        except (TypeError, ValueError, KeyError) as err:
            if isinstance(err, ScenarioError):
                raise ScenarioError(err.key, err.value, err.problem, source) from None
            raise ScenarioError(name, value, f"cannot apply ({err})", source) from None
    try:
        return build_scenario(full, source)
    except ScenarioError as err:
        shown = ", ".join(f"{k}={v!r}" for k, v in levers.items() if v is not None)
        raise ScenarioError(err.key, err.value, f"{err.problem} (after {shown})", source) from None


def resolve(
    scenario: Scenario | str | Path,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    **levers: Any,
) -> Scenario:
    """A scenario (path or loaded) with dotted-path overrides and flat levers applied.

    Args:
        scenario: a scenario file, or a loaded :class:`Scenario`.
        overrides: dotted paths or lever names to values, or ``"key=value"`` strings.
        **levers: flat levers by name (see :data:`LEVERS`); ``None`` leaves one as it is.

    Returns:
        The validated scenario.

    Raises:
        ScenarioError: bad path, value or lever, in one line.
        TypeError: a keyword that is not a lever.

    """
    unknown = sorted(set(levers) - set(LEVERS))
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r} (levers: {', '.join(LEVERS)})")
    pairs = [*_pairs(overrides), *levers.items()]
    if isinstance(scenario, Scenario):
        if not pairs:
            return scenario
        return apply_overrides(scenario.model_dump(mode="python", by_alias=True), dict(pairs))
    path = Path(scenario)
    return apply_overrides(_resolve(path), dict(pairs), str(path))


def scenario_data(path: str | Path) -> Data:
    """Raw data of a scenario file with its ``extends:`` chain resolved (no overrides)."""
    return _resolve(Path(path))


def levers_table() -> list[dict[str, Any]]:
    """Every lever as a row (name, doc, unit, changes, kind, low, high, choices)."""
    return [
        {
            "name": lever.name,
            "doc": lever.doc,
            "unit": lever.unit,
            "changes": lever.changes,
            "kind": lever.kind,
            "low": lever.low,
            "high": lever.high,
            "choices": list(lever.choices),
        }
        for lever in LEVERS.values()
    ]
