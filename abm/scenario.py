"""Scenario schema, loading, `extends:` inheritance, `--set` overrides and validation errors.

A scenario is plain, validated data: YAML read with a safe loader, merged with the scenario it
extends, overridden by dotted ``key.path=value`` assignments, then checked against the pydantic
schema below. Every rate in a scenario is per year; the model converts to ticks.

Errors are raised as :class:`ScenarioError`, whose message is one line naming the file, the key
path and the offending value.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import reprlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

REGIONS = ("asia", "europe", "americas", "oceania", "africa")
STAGES = ("mine", "separation", "magnet")
MAX_FILE_BYTES = 5_000_000
# values in a file once YAML aliases are expanded (alias bombs); room for firm-level worlds
# (a 100,000-buyer world has ~2 M, benchmarks/synthetic.py), far below what a bomb reaches
MAX_VALUES = 5_000_000
MAX_MAGNITUDE = 1e12  # no scenario number is larger; bigger ones overflow products of them
DATE = r"^\d{4}-(0[1-9]|1[0-2])$"  # YYYY-MM
NAME = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"  # safe as (part of) a folder name
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's safe loader if built
_SHOWN = reprlib.Repr(maxstring=60, maxother=60, maxlist=4, maxdict=4, maxlevel=2)


class ScenarioError(ValueError):
    """A scenario that cannot be loaded or is invalid; the message is one line."""

    def __init__(self, key: str, value: Any, problem: str, source: str | None = None) -> None:
        self.key, self.value, self.problem, self.source = key, value, problem, source
        where = f"{source}: " if source else ""
        shown = _SHOWN.repr(value)  # bounded: never walks a huge or deeply nested value
        if len(shown) > 80:
            shown = shown[:77] + "..."
        message = f"{where}{key} = {shown}: {problem}"
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


_NUMERIC = {float, int, float | None, int | None, str | int, dict[str, float]}


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=False, validate_assignment=False, allow_inf_nan=False
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_yes_no_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """Refuse true/false (YAML also reads yes/no/on/off so) where a number is expected."""
        if info.field_name in _numeric_fields(cls):
            values = value.values() if isinstance(value, dict) else [value]
            if any(isinstance(v, bool) for v in values):
                raise ValueError("expected a number, not true/false (or yes/no, on/off)")
        return value


@functools.cache
def _numeric_fields(cls: type[BaseModel]) -> frozenset[str]:
    """A model's fields that hold numbers.

    Worked out once per model: a 100,000-buyer scenario validates about 900,000 fields, and
    pydantic's ``model_fields`` is slow to reach.
    """
    return frozenset(name for name, f in cls.model_fields.items() if f.annotation in _NUMERIC)


def _check_shares(shares: dict[str, float], what: str) -> dict[str, float]:
    for element, share in shares.items():
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{what} share of {element} must lie in [0, 1]")
    return shares


class Country(_Strict):
    """A country (or aggregate such as EU, ROW) and its transport region."""

    name: str = ""
    region: Literal["asia", "europe", "americas", "oceania", "africa"]


class TransportClass(_Strict):
    """Transport cost and lead time for one distance class."""

    cost_usd_per_kg: float = Field(ge=0)
    lead_time_months: int = Field(ge=0, le=24)


class TransportOverride(_Strict):
    """A specific origin → destination transport term that replaces the distance class."""

    origin: str
    destination: str
    cost_usd_per_kg: float = Field(ge=0)
    lead_time_months: int = Field(ge=0, le=24)


class Transport(_Strict):
    """Transport by distance class: same country, same region, different region."""

    domestic: TransportClass = TransportClass(cost_usd_per_kg=0.05, lead_time_months=0)
    regional: TransportClass = TransportClass(cost_usd_per_kg=0.3, lead_time_months=1)
    intercontinental: TransportClass = TransportClass(cost_usd_per_kg=0.8, lead_time_months=2)
    overrides: list[TransportOverride] = []


class MarketParams(_Strict):
    """Parameters of clearing (§7.1) and price formation (§7.2)."""

    logit_beta: float = Field(8.0, gt=0, description="dimensionless price sensitivity")
    rationing_rounds: int = Field(10, ge=1, le=50)
    price_adjustment: float = Field(0.1, ge=0, le=2, description="κ per tick")
    loss_tolerance: float = Field(
        0.1, ge=0, le=1, description="share of unit cost a seller's ask may fall below it"
    )
    expectation_smoothing: float = Field(0.3, gt=0, le=1, description="weight of the new price")
    stock_cover_months: float = Field(3.0, gt=0, description="sellers' maximum output stock")
    input_cover_months: float = Field(1.0, ge=0, description="processors' input stock target")
    order_adjust_months: float = Field(3.0, gt=0, description="months to close a stock gap")
    price_noise: float = Field(0.01, ge=0, le=1, description="s.d. of sellers' log-ask noise")
    warmup_ticks: int = Field(24, ge=0, le=600, description="ticks run before the start")


class Substitution(_Strict):
    """Slow substitution and thrifting (Sprecher et al. 2017)."""

    threshold_multiple: float = Field(1.5, gt=0, description="landed / reference price trigger")
    max_rate_per_yr: float = Field(0.10, ge=0, le=1, description="largest demand loss per year")
    recovery_share: float = Field(0.3, ge=0, le=1, description="share of lost demand regained")


class Mine(_Strict):
    """An operating or idle mine (or a country aggregate of mines)."""

    name: str
    country: str
    capacity_t_per_yr: float = Field(ge=0, description="t REO per year")
    cash_cost_usd_per_kg: float = Field(ge=0, description="US$ per kg REO in concentrate")
    composition: dict[str, float] = Field(description="mass share of each element in REO")
    status: Literal["operating", "idle"] = "operating"
    utilisation: float = Field(1.0, ge=0, le=1, description="share of capacity in use at start")
    sells_to: list[str] = Field(
        default_factory=list,
        description="captive supply: separation plants (processors or projects) it sells to; "
        "empty: any",
    )

    _shares = field_validator("composition")(lambda v: _check_shares(v, "composition"))


class Processor(_Strict):
    """A separation plant (concentrate → oxides) or magnet plant (oxides → NdFeB)."""

    name: str
    country: str
    stage: Literal["separation", "magnet"]
    capacity_t_per_yr: float = Field(
        ge=0, description="t REO input per year (separation) or t magnet per year (magnet)"
    )
    processing_cost_usd_per_kg: float = Field(ge=0, description="per kg of capacity unit")
    recovery: dict[str, float] = Field(
        default_factory=dict, description="separation: recovered share of each element"
    )
    status: Literal["operating", "idle"] = "operating"
    utilisation: float = Field(1.0, ge=0, le=1)

    _shares = field_validator("recovery")(lambda v: _check_shares(v, "recovery"))


class Buyer(_Strict):
    """An end user of one product (magnet users by sector, or oxide users)."""

    name: str
    country: str
    product: str = Field(description="'magnet' or 'oxide:<element>'")
    sector: str = "other"
    base_demand_t_per_yr: float = Field(ge=0)
    growth_rate_per_yr: float = Field(0.0, ge=-0.5, le=1)
    elasticity: float = Field(0.2, ge=0, le=5, description="short-run price elasticity (>0)")
    reference_price_usd_per_kg: float = Field(gt=0)
    reservation_price_usd_per_kg: float = Field(gt=0)
    inventory_target_months: float = Field(2.0, ge=0)
    security_premium_share: float = Field(0.0, ge=0, le=5)
    min_compliant_share: float = Field(0.0, ge=0, le=1)
    switching_cost_usd_per_kg: float = Field(0.0, ge=0)
    substitution: Substitution = Field(default_factory=Substitution)


class Project(_Strict):
    """A known deposit or planned plant that is built when its NPV is positive (§7.3)."""

    name: str
    country: str
    stage: Literal["mine", "separation", "magnet"]
    capacity_t_per_yr: float = Field(gt=0)
    unit_cost_usd_per_kg: float = Field(ge=0, description="cash or processing cost")
    capex_usd_million: float = Field(ge=0)
    earliest_start: str = Field(
        pattern=DATE, description="YYYY-MM: first month construction can begin"
    )
    lead_time_years: float = Field(ge=0, le=20)
    ramp_up_years: float = Field(1.0, ge=0, le=10)
    life_years: float = Field(20.0, gt=0, le=60)
    discount_rate: float = Field(0.10, ge=0, le=1)
    composition: dict[str, float] = Field(default_factory=dict)
    recovery: dict[str, float] = Field(default_factory=dict)
    sells_to: list[str] = Field(
        default_factory=list,
        description="captive supply: separation plants (processors or projects) it sells to; "
        "empty: any",
    )

    _shares = field_validator("composition", "recovery")(lambda v: _check_shares(v, "element"))


class Investment(_Strict):
    """Investment, expansion, idling and exit rules (§7.3)."""

    enabled: bool = True
    interval_months: int = Field(12, ge=1)
    expansion_hurdle: float = Field(0.25, ge=0, description="margin / price over last year")
    expansion_share: float = Field(0.10, ge=0, le=1, description="capacity added per decision")
    expansion_lead_time_years: float = Field(2.0, ge=0, le=20)
    expansion_capex_usd_per_t_per_yr: float = Field(20_000.0, ge=0)
    utilisation_to_expand: float = Field(0.85, ge=0, le=1)
    fixed_cost_share: float = Field(
        0.0, ge=0, lt=1, description="share of unit cost fixed (paid monthly at capacity)"
    )
    price_memory_years: float = Field(
        1.0, gt=0, le=50, description="years of prices investors average (exponential)"
    )
    loss_months_to_idle: int = Field(6, ge=1)
    idle_months_to_close: int = Field(36, ge=1)


class Network(_Strict):
    """Which trade links the world has (MODEL.md §5); default: every seller to every buyer."""

    suppliers_per_buyer: int | None = Field(
        None,
        ge=1,
        description="link each buying stock (end user, plant input) to this many sellers of "
        "its product, drawn at random with the model's generator; None: to all of them",
    )


class Magnet(_Strict):
    """The magnet stage: oxide input per tonne of NdFeB (Leontief), REO content by mass."""

    recipe_t_per_t: dict[str, float]


# ---------------------------------------------------------------- policies (MODEL.md §8)

PARTY = "a country code, a bloc ('alliance', 'china', 'other') or 'any'"


class Tariff(_Strict):
    """Ad valorem tariff on imports of a product from an origin into a destination."""

    origin: str = Field(description=PARTY)
    destination: str = Field(description=PARTY)
    product: str = Field("any", description="a product name or 'any'")
    rate: float = Field(ge=0, le=10)


class ExportDuty(_Strict):
    """China's ad valorem export duty on a product (paid on exports, revenue to China)."""

    product: str = "any"
    rate: float = Field(ge=0, le=10)


class ExportControl(_Strict):
    """China's export quota and/or licensing of a product to a destination."""

    product: str = "any"
    destination: str = Field("any", description=PARTY)
    quota_t_per_yr: float | None = Field(None, ge=0, description="cap on exports; None: no cap")
    approval_probability: float = Field(1.0, ge=0, le=1, description="licence approval per tick")
    delay_months: int = Field(0, ge=0, le=24, description="extra lead time of licensed exports")


class PriceFloor(_Strict):
    """An alliance minimum price for compliant material of one product."""

    product: str
    level_usd_per_kg: float = Field(gt=0)
    mechanism: Literal["price_gap_subsidy", "border_adjusted", "offtake"]
    upside_share: float = Field(0.0, ge=0, le=1, description="subsidy: alliance share above F")
    offtake_t_per_yr: float = Field(0.0, ge=0, description="offtake: volume bought at F")


class Compliance(_Strict):
    """Rules of origin for alliance buyers and the ban on allied mines selling to China."""

    min_compliant_share: float = Field(0.0, ge=0, le=1)
    ban_allied_mines_to_china: bool = False
    de_minimis_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="a lot is compliant while at most this share of it touched China",
    )


class Preference(_Strict):
    """In-alliance preference: no tariffs between members, cheaper transport."""

    zero_internal_tariffs: bool = True
    transport_discount_share: float = Field(0.0, ge=0, le=1)


class Reserve(_Strict):
    """A strategic reserve (Project Vault-like): a buyer and seller on the network."""

    owner: str = Field("alliance", description="a bloc or country code")
    product: str = "oxide:NdPr"
    loan_usd_million: float = Field(0.0, ge=0)
    private_usd_million: float = Field(0.0, ge=0)
    carrying_cost_per_yr: float = Field(0.05, ge=0, le=1, description="on capital drawn")
    target_months: float = Field(6.0, ge=0, description="of the owner's consumption")
    buy_trigger_usd_per_kg: float = Field(gt=0)
    release_trigger_usd_per_kg: float = Field(gt=0)
    max_buy_share_per_month: float = Field(0.2, gt=0, le=1, description="of target stock")
    max_release_share_per_month: float = Field(0.5, gt=0, le=1, description="of target stock")
    release_shortage_threshold: float = Field(
        0.05, ge=0, le=1, description="owner bloc's shortage of the reserve's product"
    )
    initial_stock_t: float = Field(
        0.0, ge=0, description="compliant stock bought before the start, at the buy trigger"
    )


class ChinaPricing(_Strict):
    """China's pricing mode: market (§7.2) or strategic below-cost export pricing."""

    mode: Literal["market", "strategic"] = "market"
    trigger_non_cn_share: float = Field(0.15, ge=0, le=1, description="of world separation")
    export_price_fraction: float = Field(0.8, gt=0, le=2, description="of unit cost")
    budget_usd_million: float = Field(5_000.0, ge=0)
    products: list[str] = Field(
        default_factory=lambda: ["any"], description="products priced strategically abroad"
    )


class Policies(_Strict):
    """Every policy lever; all off by default."""

    tariffs: list[Tariff] = []
    export_duties: list[ExportDuty] = []
    export_controls: list[ExportControl] = []
    price_floors: list[PriceFloor] = []
    compliance: Compliance = Compliance()
    preference: Preference = Preference()
    reserve: Reserve | None = None
    china_pricing: ChinaPricing = ChinaPricing()


class DemandShock(_Strict):
    """Multiply the demand of matching buyers (by product, country or bloc, sector)."""

    multiplier: float = Field(ge=0, le=10)
    product: str = "any"
    where: str = Field("any", description=PARTY)
    sector: str = "any"


class TransportCut(_Strict):
    """Stop trade between two parties (both directions)."""

    between: str = Field(description=PARTY)
    and_: str = Field(alias="and", description=PARTY)


class Event(_Strict):
    """A dated change: policy settings, membership, or a shock, optionally for a span."""

    at: str | int = Field(description="tick (int) or date YYYY-MM")
    name: str = ""
    duration_months: int | None = Field(None, ge=1, description="revert after; None: permanent")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted paths -> values")
    outage: list[str] = Field(default_factory=list, description="producers with no capacity")
    demand_shock: DemandShock | None = None
    transport_cut: TransportCut | None = None


class Scenario(_Strict):
    """A whole scenario: world, agents, parameters."""

    name: str = Field(pattern=NAME)
    description: str = ""
    start: str = Field("2025-01", pattern=DATE)
    ticks: int = Field(240, ge=1, le=100_000)
    ticks_per_year: int = Field(12, ge=1, le=365)
    china: str = Field("CN", description="country code of the 'china' bloc")
    alliance: list[str] = Field(default_factory=list, description="member countries")
    elements: list[str] = Field(min_length=1)
    countries: dict[str, Country]
    transport: Transport = Transport()
    network: Network = Network()
    magnet: Magnet | None = None
    initial_prices_usd_per_kg: dict[str, float]
    market: MarketParams = MarketParams()
    investment: Investment = Investment()
    mining_quota_t_per_yr: dict[str, float] = Field(default_factory=dict)
    separation_quota_t_per_yr: dict[str, float] = Field(default_factory=dict)
    quota_growth_per_yr: dict[str, float] = Field(
        default_factory=dict, description="yearly growth of a country's quotas (compounded)"
    )
    mines: list[Mine] = Field(min_length=1)
    processors: list[Processor] = Field(min_length=1)
    buyers: list[Buyer] = Field(min_length=1)
    projects: list[Project] = Field(default_factory=list)
    policies: Policies = Policies()
    events: list[Event] = Field(default_factory=list)
    flow_log: Literal["edges", "countries", "none"] = Field(
        "edges",
        description=(
            "flows kept each tick: every edge that moved material, totals per product and "
            "country pair (for firm-level worlds: the edge log grows by ~8 bytes per edge a "
            "tick), or none at all"
        ),
    )

    @property
    def products(self) -> list[str]:
        """Product names in supply-chain order: concentrate, oxides, then magnet if on."""
        oxides = [f"oxide:{e}" for e in self.elements]
        return ["concentrate", *oxides, *(["magnet"] if self.magnet else [])]

    def bloc_of(self, country: str) -> str:
        """Bloc of a country: 'china', 'alliance' or 'other'."""
        if country == self.china:
            return "china"
        return "alliance" if country in self.alliance else "other"


# ---------------------------------------------------------------- loading


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[misc, valid-type]
    """The safe loader, refusing a key given twice in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key_node.value!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_size(
    data: Any, key: str, value: Any, source: str | None = None, max_depth: int = 64
) -> None:
    """Refuse data that expands to too many values, nests too deep, or contains itself.

    YAML aliases can make a small file expand enormously (an alias bomb) or refer to itself.
    Runs before anything recursive (merging, copying, validation) touches the data. Sizes
    and heights are memoised per container, so aliases are counted expanded without being
    expanded: the cost is linear in the number of distinct containers.
    """

    def fail(problem: str) -> ScenarioError:
        return ScenarioError(key, value, problem, source)

    size: dict[int, int] = {}  # per container id: values in it, expanded, itself included
    height: dict[int, int] = {}  # per container id: levels of nesting below it
    open_: set[int] = set()  # containers whose children are still being counted
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        node, children_done = stack.pop()
        if not isinstance(node, dict | list) or (id(node) in size and not children_done):
            continue
        # a mapping's keys are never containers (they must be hashable): only values nest
        children = node.values() if isinstance(node, dict) else node
        n_children = 2 * len(node) if isinstance(node, dict) else len(node)  # keys count too
        nested = [c for c in children if isinstance(c, dict | list)]
        if not nested:  # a container of plain values (most are): counted at once
            size[id(node)], height[id(node)] = 1 + n_children, 1
            if size[id(node)] > MAX_VALUES:
                raise fail(f"expands to more than {MAX_VALUES} values (YAML aliases?)")
            continue
        if not children_done:
            if id(node) in open_:
                raise fail("contains itself (a recursive YAML alias)")
            open_.add(id(node))
            stack.append((node, True))
            for child in nested:
                if id(child) in open_:
                    raise fail("contains itself (a recursive YAML alias)")
                stack.append((child, False))
            continue
        open_.discard(id(node))
        size[id(node)] = 1 + n_children - len(nested) + sum(size[id(c)] for c in nested)
        height[id(node)] = 1 + max(height[id(c)] for c in nested)
        if size[id(node)] > MAX_VALUES:
            raise fail(f"expands to more than {MAX_VALUES} values (YAML aliases?)")
        if height[id(node)] > max_depth:
            raise fail(f"nested more than {max_depth} levels deep")


def _read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML file that holds a mapping; one-line ScenarioErrors naming the file."""

    def error(problem: str) -> ScenarioError:
        return ScenarioError("file", path.name, problem, str(path))

    if path.is_dir():
        raise error("is a folder, not a scenario file")
    if not path.is_file():
        raise error("no such scenario file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise error(f"larger than {MAX_FILE_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as err:
        raise error(f"not valid YAML ({' '.join(str(err).split())})") from None
    except OSError as err:
        raise error(f"cannot be read ({err.strerror})") from None
    if data is None:
        raise error("is empty")
    if not isinstance(data, dict):
        raise error("must be a YAML mapping of keys to values")
    _check_size(data, "file", path.name, str(path))
    return data


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _resolve(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ScenarioError("extends", path.name, "circular extends chain", str(path))
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent.strip():
        raise ScenarioError("extends", parent, "must be a path to another scenario file", str(path))
    if not (path.parent / parent).is_file():
        raise ScenarioError("extends", parent, "no such scenario file", str(path))
    return _deep_merge(_resolve(path.parent / parent, (*seen, path)), data)


_ENTRY_SECTIONS = ("mines", "processors", "buyers", "projects")


def _own_copy(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` copied so that neither defaults nor validation touch or keep the caller's objects.

    Entry lists are copied one level deep only (a 100,000-buyer scenario's deep copy took
    about 0.9 s): :func:`_apply_defaults` merges defaults into copies of the entries, and
    validation builds each entry's model from new containers (no entry field holds arbitrary
    objects). Everything else is copied deep.
    """
    return {
        key: list(value)
        if key in _ENTRY_SECTIONS and isinstance(value, list)
        else copy.deepcopy(value)
        for key, value in data.items()
    }


def _apply_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """Merge the optional ``defaults: {mine:, processor:, buyer:, project:}`` into each entry."""
    defaults = data.pop("defaults", None) or {}
    if not isinstance(defaults, dict):
        raise ScenarioError("defaults", defaults, "must be a mapping")
    for kind, section in (
        ("mine", "mines"),
        ("processor", "processors"),
        ("buyer", "buyers"),
        ("project", "projects"),
    ):
        base = defaults.pop(kind, None)
        if base is None:
            continue
        if not isinstance(base, dict):
            raise ScenarioError(f"defaults.{kind}", base, "must be a mapping")
        entries = data.get(section)
        if isinstance(entries, list):
            data[section] = [_deep_merge(base, e) if isinstance(e, dict) else e for e in entries]
    if defaults:
        key = next(iter(defaults))
        raise ScenarioError(
            f"defaults.{key}",
            defaults[key],
            "unknown defaults section (mine, processor, buyer, project)",
        )
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.path=value`` and parse the value as YAML (so numbers stay numbers)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ScenarioError("--set", text, "expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ScenarioError(key, raw, "value is not valid YAML") from None
    return key, value


def _set_path(data: dict[str, Any], key: str, value: Any) -> None:
    """Assign at a dotted path; list items are addressed by index or by their ``name``."""
    node: Any = data
    parts = key.split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            index = _list_index(node, part, where)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ScenarioError(key, value, f"'{'.'.join(parts[:depth])}' is not a section")


def _list_index(items: list[Any], part: str, where: str) -> int:
    if part.lstrip("-").isdigit():
        index = int(part)
        if -len(items) <= index < len(items):
            return index
        raise ScenarioError(where, part, f"index out of range (list has {len(items)} items)")
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == part:
            return index
    raise ScenarioError(where, part, "no list item with this name")


class _Missing:
    def __repr__(self) -> str:
        return "(missing)"


_MISSING = _Missing()
_PATTERN_PROBLEMS = {
    DATE: "expected a date YYYY-MM",
    NAME: "use 1-64 letters, digits, '_', '.' or '-', not starting with '.' (it names the run "
    "folder)",
}


def _validation_error(err: ValidationError, source: str | None) -> ScenarioError:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "scenario"
    problem = first["msg"]
    if first["type"] == "extra_forbidden":
        problem = "unknown key"
    elif first["type"] == "string_pattern_mismatch":
        problem = _PATTERN_PROBLEMS.get(first["ctx"]["pattern"], problem)
    problem = problem.removeprefix("Value error, ")
    value = first.get("input")
    if first["type"] == "missing":  # pydantic gives the enclosing mapping as the input
        value, problem = _MISSING, "required key is missing"
    return ScenarioError(key, value, problem, source)


def build_scenario(
    data: dict[str, Any], source: str | None = None, *, standing: bool = True
) -> Scenario:
    """Validate a raw scenario mapping (defaults applied) into a :class:`Scenario`.

    Args:
        data: the scenario as plain data (``extends:`` resolved).
        source: file name shown in error messages.
        standing: the data is a scenario as it starts (not as changed by a dated event), so
            its policies may not cut a buyer off from every supplier.

    Raises:
        ScenarioError: with a one-line message naming the key and value.

    """
    if not isinstance(data, dict):
        raise ScenarioError("scenario", data, "must be a mapping of keys to values", source)
    _check_size(data, "scenario", "(mapping)", source)
    try:
        data = _apply_defaults(_own_copy(data))
        scenario = Scenario.model_validate(data)
        _check_cross_fields(scenario, standing)
    except ValidationError as err:
        raise _validation_error(err, source) from None
    except ScenarioError as err:
        raise ScenarioError(err.key, err.value, err.problem, source) from None
    return scenario


def load_scenario(
    path: str | Path, overrides: list[str] | dict[str, Any] | None = None
) -> Scenario:
    """Load a scenario file, follow ``extends:``, apply overrides and validate.

    Args:
        path: YAML scenario file.
        overrides: ``["key.path=value", ...]`` as given to ``--set``, or a mapping of dotted
            paths to values.

    Returns:
        The validated scenario.

    Raises:
        ScenarioError: with a one-line message naming the key and value.

    """
    path = Path(path)
    data = _resolve(path)
    pairs = (
        [parse_override(o) for o in overrides]
        if isinstance(overrides, list)
        else list((overrides or {}).items())
    )
    for key, value in pairs:
        _set_path(data, key, value)
    return build_scenario(data, str(path))


# ---------------------------------------------------------------- cross-field checks


def _check_magnitudes(node: Any, where: str) -> None:
    """Every number is at most MAX_MAGNITUDE in size (finite values are the schema's job)."""
    if isinstance(node, dict):
        for key, value in node.items():
            _check_magnitudes(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_magnitudes(value, f"{where}.{i}")
    elif isinstance(node, int | float) and not isinstance(node, bool):
        if abs(node) > MAX_MAGNITUDE:
            raise ScenarioError(where, node, f"larger than {MAX_MAGNITUDE:g} (overflow guard)")


def _check_cross_fields(s: Scenario, standing: bool = True) -> None:
    _check_magnitudes(s.model_dump(mode="python", by_alias=True), "")
    if len(set(s.elements)) != len(s.elements):
        raise ScenarioError("elements", s.elements, "element names must be unique")
    known = set(s.countries)
    if s.china not in known:
        raise ScenarioError("china", s.china, "not one of the scenario's countries")
    for i, member in enumerate(s.alliance):
        if member not in known:
            raise ScenarioError(f"alliance.{i}", member, "unknown country")
        if member == s.china:
            raise ScenarioError(f"alliance.{i}", member, "the china country cannot be a member")
    for i, o in enumerate(s.transport.overrides):
        for attr in ("origin", "destination"):
            if getattr(o, attr) not in known:
                raise ScenarioError(
                    f"transport.overrides.{i}.{attr}", getattr(o, attr), "unknown country"
                )
    for section in ("mining_quota_t_per_yr", "separation_quota_t_per_yr"):
        for country, quota in getattr(s, section).items():
            if country not in known:
                raise ScenarioError(f"{section}.{country}", country, "unknown country")
            if quota < 0 or not math.isfinite(quota):
                raise ScenarioError(f"{section}.{country}", quota, "must be >= 0 and finite")
    for country, growth in s.quota_growth_per_yr.items():
        if country not in known:
            raise ScenarioError(f"quota_growth_per_yr.{country}", country, "unknown country")
        if not -0.5 <= growth <= 1.0:
            raise ScenarioError(f"quota_growth_per_yr.{country}", growth, "must lie in [-0.5, 1]")
    for product, price in s.initial_prices_usd_per_kg.items():
        if product not in s.products:
            raise ScenarioError(
                f"initial_prices_usd_per_kg.{product}",
                price,
                f"unknown product (known: {', '.join(s.products)})",
            )
        if not price > 0:
            raise ScenarioError(f"initial_prices_usd_per_kg.{product}", price, "must be > 0")
    for product in s.products:
        if product not in s.initial_prices_usd_per_kg:
            raise ScenarioError("initial_prices_usd_per_kg", product, "missing a price")
    if s.magnet is not None:
        _check_elements(s, s.magnet.recipe_t_per_t, "magnet.recipe_t_per_t", partial=True)
        _check_recipe(s.magnet.recipe_t_per_t)
    names: set[str] = set()
    for section in _ENTRY_SECTIONS:
        for i, entry in enumerate(getattr(s, section)):
            where = f"{section}.{i}"
            if entry.name in names:
                raise ScenarioError(f"{where}.name", entry.name, "agent names must be unique")
            names.add(entry.name)
            if entry.country not in known:
                raise ScenarioError(f"{where}.country", entry.country, "unknown country")
            _check_entry(s, section, where, entry)
    _check_captive_supply(s)
    _check_suppliers(s, standing)
    _check_policies(s)
    _check_events(s)


def _check_recipe(recipe: dict[str, float]) -> None:
    """A magnet recipe: oxide inputs per tonne of magnet, some positive, at most 1 t in all."""
    for element, coefficient in recipe.items():
        if coefficient < 0:
            raise ScenarioError(f"magnet.recipe_t_per_t.{element}", coefficient, "must be >= 0")
    if not any(coefficient > 0 for coefficient in recipe.values()):
        raise ScenarioError("magnet.recipe_t_per_t", recipe, "needs an oxide input above 0")
    if sum(recipe.values()) > 1:
        raise ScenarioError(
            "magnet.recipe_t_per_t", recipe, "more than 1 t of oxide per t of magnet"
        )


def _check_party(s: Scenario, party: str, where: str) -> None:
    if party not in ("any", "alliance", "china", "other") and party not in s.countries:
        raise ScenarioError(where, party, "unknown country or bloc (alliance, china, other, any)")


def _check_product(s: Scenario, product: str, where: str) -> None:
    if product != "any" and product not in s.products:
        raise ScenarioError(where, product, f"unknown product (known: {', '.join(s.products)})")


def _check_policies(s: Scenario) -> None:
    pol = s.policies
    for i, t in enumerate(pol.tariffs):
        _check_party(s, t.origin, f"policies.tariffs.{i}.origin")
        _check_party(s, t.destination, f"policies.tariffs.{i}.destination")
        _check_product(s, t.product, f"policies.tariffs.{i}.product")
    for i, d in enumerate(pol.export_duties):
        _check_product(s, d.product, f"policies.export_duties.{i}.product")
    for i, c in enumerate(pol.export_controls):
        _check_product(s, c.product, f"policies.export_controls.{i}.product")
        _check_party(s, c.destination, f"policies.export_controls.{i}.destination")
    held = pol.reserve.product if pol.reserve is not None else None
    for i, f in enumerate(pol.price_floors):
        _check_product(s, f.product, f"policies.price_floors.{i}.product")
        if f.product == "any":
            raise ScenarioError(f"policies.price_floors.{i}.product", "any", "name one product")
        if f.mechanism == "offtake":
            held = held or f.product
            if f.product != held:
                raise ScenarioError(
                    f"policies.price_floors.{i}.product",
                    f.product,
                    f"an offtake floor buys into the strategic reserve, which holds {held}",
                )
    for i, product in enumerate(pol.china_pricing.products):
        _check_product(s, product, f"policies.china_pricing.products.{i}")
    if pol.reserve is not None:
        _check_party(s, pol.reserve.owner, "policies.reserve.owner")
        _check_product(s, pol.reserve.product, "policies.reserve.product")
        if pol.reserve.product in ("any", "concentrate"):
            raise ScenarioError(
                "policies.reserve.product",
                pol.reserve.product,
                "a reserve holds an oxide or magnets",
            )
        if pol.reserve.release_trigger_usd_per_kg <= pol.reserve.buy_trigger_usd_per_kg:
            raise ScenarioError(
                "policies.reserve.release_trigger_usd_per_kg",
                pol.reserve.release_trigger_usd_per_kg,
                "must be above the buy trigger",
            )


def _check_events(s: Scenario) -> None:
    producers = {e.name for e in [*s.mines, *s.processors, *s.projects]}
    start = _months(s.start)
    for i, event in enumerate(s.events):
        where = f"events.{i}"
        if isinstance(event.at, int):
            tick = event.at
        else:
            if not re.match(DATE, event.at):
                raise ScenarioError(f"{where}.at", event.at, "expected a tick or YYYY-MM")
            tick = round((_months(event.at) - start) * s.ticks_per_year / 12)
        if not 0 <= tick <= s.ticks:
            raise ScenarioError(
                f"{where}.at", event.at, f"outside the horizon (ticks 0–{s.ticks} from {s.start})"
            )
        for j, name in enumerate(event.outage):
            if name not in producers:
                raise ScenarioError(f"{where}.outage.{j}", name, "no producer with this name")
        if event.demand_shock is not None:
            _check_product(s, event.demand_shock.product, f"{where}.demand_shock.product")
            _check_party(s, event.demand_shock.where, f"{where}.demand_shock.where")
            sectors = {b.sector for b in s.buyers}
            if event.demand_shock.sector not in {"any", *sectors}:
                raise ScenarioError(
                    f"{where}.demand_shock.sector",
                    event.demand_shock.sector,
                    f"no buyer has this sector (known: {', '.join(sorted(sectors))}, any)",
                )
        if event.transport_cut is not None:
            _check_party(s, event.transport_cut.between, f"{where}.transport_cut.between")
            _check_party(s, event.transport_cut.and_, f"{where}.transport_cut.and")
        if event.set:
            data = s.model_dump(mode="python", by_alias=True, exclude={"events"})
            for path, value in event.set.items():
                if path.split(".")[0] not in ("policies", "alliance"):
                    raise ScenarioError(
                        f"{where}.set.{path}",
                        value,
                        "events may change policies.* and alliance only",
                    )
                try:
                    _set_path(data, path, value)
                except ScenarioError as err:
                    raise ScenarioError(f"{where}.set.{path}", value, err.problem) from None
            try:
                changed = build_scenario(data, standing=False)
            except ScenarioError as err:
                raise ScenarioError(f"{where}.set.{err.key}", err.value, err.problem) from None
            held, needed = reserve_product(s), reserve_product(changed)
            if needed is not None and needed != held:
                raise ScenarioError(
                    f"{where}.set",
                    event.set,
                    f"a reserve or offtake floor for {needed} must be in the scenario from the "
                    f"start (its stock holds {held or 'nothing'})",
                )


def reserve_product(s: Scenario) -> str | None:
    """The product the strategic reserve's stock holds: the reserve's, else an offtake floor's.

    The reserve's stock rows are built once, with the world, from the scenario's standing
    policies; offtake floors buy into the same stock.
    """
    if s.policies.reserve is not None:
        return s.policies.reserve.product
    offtake = [f.product for f in s.policies.price_floors if f.mechanism == "offtake"]
    return offtake[0] if offtake else None


def _months(date: str) -> int:
    try:
        year, month = (int(x) for x in date.split("-"))
    except ValueError:
        raise ScenarioError("date", date, "expected YYYY-MM") from None
    return year * 12 + month - 1


def _check_elements(s: Scenario, shares: dict[str, float], where: str, partial: bool) -> None:
    for element in shares:
        if element not in s.elements:
            raise ScenarioError(
                f"{where}.{element}",
                shares[element],
                f"unknown element (known: {', '.join(s.elements)})",
            )
    if not partial and abs(sum(shares.values()) - 1.0) > 1e-6:
        raise ScenarioError(where, shares, f"shares sum to {sum(shares.values()):.6g}, not 1")


def _check_entry(s: Scenario, section: str, where: str, entry: Any) -> None:
    stage = {"mines": "mine", "buyers": "buyer"}.get(section, getattr(entry, "stage", None))
    if stage == "mine":
        _check_elements(s, entry.composition, f"{where}.composition", partial=False)
    elif stage == "separation":
        _check_elements(s, entry.recovery, f"{where}.recovery", partial=True)
        if not entry.recovery:
            raise ScenarioError(
                f"{where}.recovery",
                entry.recovery,
                "a separation plant needs a recovery share per element",
            )
    elif stage == "magnet" and s.magnet is None:
        raise ScenarioError(f"{where}.stage", "magnet", "the scenario has no magnet stage")
    elif stage == "buyer" and entry.product not in s.products[1:]:
        raise ScenarioError(
            f"{where}.product",
            entry.product,
            f"unknown product (known: {', '.join(s.products[1:])})",
        )
    if stage == "buyer":
        initial = s.initial_prices_usd_per_kg.get(entry.product)
        if initial and not initial / 10 <= entry.reference_price_usd_per_kg <= initial * 10:
            raise ScenarioError(
                f"{where}.reference_price_usd_per_kg",
                entry.reference_price_usd_per_kg,
                f"more than 10x away from the initial {entry.product} price ({initial:g})",
            )
    if stage == "buyer" and entry.reservation_price_usd_per_kg < entry.reference_price_usd_per_kg:
        raise ScenarioError(
            f"{where}.reservation_price_usd_per_kg",
            entry.reservation_price_usd_per_kg,
            "below the reference price",
        )


def _check_captive_supply(s: Scenario) -> None:
    """``sells_to`` names separation plants, and only mines have it."""
    separation = {p.name for p in [*s.processors, *s.projects] if p.stage == "separation"}
    for section in ("mines", "projects"):
        for i, entry in enumerate(getattr(s, section)):
            if entry.sells_to and getattr(entry, "stage", "mine") != "mine":
                raise ScenarioError(f"{section}.{i}.sells_to", entry.sells_to, "only mines have it")
            for j, name in enumerate(entry.sells_to):
                if name not in separation:
                    raise ScenarioError(
                        f"{section}.{i}.sells_to.{j}", name, "no separation plant with this name"
                    )


def _check_suppliers(s: Scenario, standing: bool = True) -> None:
    """Every buyer has a possible supply route; so does every processor's input.

    A route is mine → separation (→ magnet plant) → buyer, over producers and pipeline projects
    alike, respecting captive supply (``sells_to``) and, for the standing policies of a scenario
    (``standing``), what they forbid from the start: China's zero export quotas and the ban on
    allied mines selling to China. Dated events may cut routes on purpose (an embargo), so the
    scenario as changed by an event is checked without its policies.
    """
    mines = [*s.mines, *(p for p in s.projects if p.stage == "mine")]
    plants = [*s.processors, *s.projects]
    separation = [p for p in plants if p.stage == "separation"]
    magnet_plants = [p for p in plants if p.stage == "magnet"]

    def blocked(product: str, seller: Any, buyer_country: str) -> bool:
        if not standing:
            return False
        pol = s.policies
        if product == "concentrate" and pol.compliance.ban_allied_mines_to_china:
            if s.bloc_of(seller.country) == "alliance" and buyer_country == s.china:
                return True
        if seller.country != s.china or buyer_country == s.china:
            return False
        destinations = ("any", buyer_country, s.bloc_of(buyer_country))
        for rule in pol.export_controls:  # the first matching control applies (policy.refresh)
            if rule.product in ("any", product) and rule.destination in destinations:
                return rule.quota_t_per_yr == 0
        return False

    def reaches(product: str, sellers: list[Any], country: str) -> bool:
        return any(not blocked(product, seller, country) for seller in sellers)

    open_to: dict[str, list[Any]] = {}  # country -> mines without a sells_to list, by country
    captive: dict[str, list[Any]] = {}  # plant name -> mines whose sells_to lists it
    for m in mines:
        for name in m.sells_to:
            captive.setdefault(name, []).append(m)

    def concentrate_sellers(plant: Any) -> list[Any]:
        # per country, not per plant: a world of thousands of plants and mines stays linear
        if plant.country not in open_to:
            open_to[plant.country] = [
                m for m in mines if not m.sells_to and not blocked("concentrate", m, plant.country)
            ]
        listed = captive.get(plant.name, [])
        return [m for m in listed if not blocked("concentrate", m, plant.country)] + open_to[
            plant.country
        ]

    oxides: dict[str, list[Any]] = {}  # oxide -> separation plants that can make it
    for plant in separation:
        ores = concentrate_sellers(plant)
        for element, recovery in plant.recovery.items():
            if recovery > 0 and any(m.composition.get(element, 0) > 0 for m in ores):
                oxides.setdefault(f"oxide:{element}", []).append(plant)
    recipe = [e for e, c in (s.magnet.recipe_t_per_t.items() if s.magnet else []) if c > 0]

    def missing_input(plant: Any) -> str | None:
        for e in recipe:
            if not reaches(f"oxide:{e}", oxides.get(f"oxide:{e}", []), plant.country):
                return f"oxide:{e}"
        return None

    sellers = {**oxides, "magnet": [p for p in magnet_plants if missing_input(p) is None]}
    given = " (given captive supply and the standing policies)" if standing else ""
    for i, buyer in enumerate(s.buyers):
        if not reaches(buyer.product, sellers.get(buyer.product, []), buyer.country):
            raise ScenarioError(
                f"buyers.{i}.product",
                buyer.product,
                f"buyer '{buyer.name}' has no possible supplier{given}",
            )
    for section in ("processors", "projects"):
        for i, plant in enumerate(getattr(s, section)):
            if plant.stage == "separation" and not concentrate_sellers(plant):
                raise ScenarioError(
                    f"{section}.{i}.name",
                    plant.name,
                    f"no mine can sell this separation plant concentrate{given}",
                )
            missing = missing_input(plant) if plant.stage == "magnet" else None
            if missing is not None:
                raise ScenarioError(
                    f"{section}.{i}.name",
                    plant.name,
                    f"no separation plant can sell this magnet plant {missing}{given}",
                )
