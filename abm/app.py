"""The interactive dashboard: Mesa's SolaraViz over the calibrated world and the main levers.

In a browser: ``solara run abm/app.py`` (add ``--host 127.0.0.1``); in Jupyter: ``from
abm.app import page; page``. The sidebar holds the levers — alliance tariff, price floor level
and mechanism, strategic reserve budget, China's export quota and pricing mode, rules of
origin, alliance partners — which take effect when **Reset** rebuilds the model; **Step** and
**▶** run it month by month. Page 0 shows NdPr oxide prices by tier, dependency on Chinese
processing, shortage and the trade-flow map of the last 12 months; page 1 shows where the
alliance's consumption came from (mine → separation → bloc).

The dashboard's world is the calibrated baseline with the levers in force from the start; the
shipped scenarios (``configs/``) are run from the CLI or the notebooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import solara
from matplotlib.figure import Figure
from mesa.visualization import SolaraViz, make_plot_component

from abm import flow_plots, plots
from abm.model import RareEarthModel
from abm.runs import Result, metrics_frame
from abm.scenario import load_scenario

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
BASELINE = CONFIGS / "baseline.yaml"
CORE_MEMBERS = ("US", "EU", "JP")
PARTNERS = ("AU", "CA", "GB", "KR")  # the February 2026 initiative's named partners
MAP_MONTHS = 12


def reserve_policy(budget_usd_million: float) -> dict[str, Any]:
    """The strategic reserve of ``configs/strategic_reserve.yaml`` with another budget."""
    reserve = load_scenario(CONFIGS / "strategic_reserve.yaml").policies.reserve
    if reserve is None:
        raise ValueError("configs/strategic_reserve.yaml has no policies.reserve")
    policy = reserve.model_dump(mode="json")
    total = policy["loan_usd_million"] + policy["private_usd_million"]
    loan_share = policy["loan_usd_million"] / total if total > 0 else 1.0
    policy["loan_usd_million"] = budget_usd_million * loan_share
    policy["private_usd_million"] = budget_usd_million * (1.0 - loan_share)
    return policy


def dashboard_overrides(
    tariff_rate: float = 0.0,
    floor_level_usd_per_kg: float = 0.0,
    floor_mechanism: str = "price_gap_subsidy",
    reserve_budget_usd_million: float = 0.0,
    export_quota_kt_per_yr: float = 0.0,
    china_pricing_mode: str = "market",
    min_compliant_share: float = 0.0,
    partners: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The dashboard's controls as levers and dotted-path overrides of the baseline.

    A control at its "off" position (0 or ``market``) leaves the baseline as it is; an export
    quota of 0 means no quota (not a ban), a floor level of 0 no floor.
    """
    overrides: dict[str, Any] = {
        "tariff_rate": tariff_rate or None,
        "china_pricing_mode": china_pricing_mode,
        "min_compliant_share": min_compliant_share,
        "alliance_members": [*CORE_MEMBERS, *partners],
    }
    if floor_level_usd_per_kg > 0:
        overrides["floor_level_usd_per_kg"] = floor_level_usd_per_kg
        overrides["floor_mechanism"] = floor_mechanism
    if export_quota_kt_per_yr > 0:
        overrides["export_quota_t_per_yr"] = 1000.0 * export_quota_kt_per_yr
    if reserve_budget_usd_million > 0:
        overrides["policies.reserve"] = reserve_policy(reserve_budget_usd_million)
    return overrides


class DashboardModel(RareEarthModel):
    """The calibrated baseline with the dashboard's levers in force from the start.

    Every argument is a keyword with a default, as Mesa's ``SolaraViz`` rebuilds the model
    from its controls; see :func:`dashboard_overrides` for what each one changes.
    """

    def __init__(
        self,
        *,
        rng: int = 0,
        tariff_rate: float = 0.0,
        floor_level_usd_per_kg: float = 0.0,
        floor_mechanism: str = "price_gap_subsidy",
        reserve_budget_usd_million: float = 0.0,
        export_quota_kt_per_yr: float = 0.0,
        china_pricing_mode: str = "market",
        min_compliant_share: float = 0.0,
        join_AU: bool = False,
        join_CA: bool = False,
        join_GB: bool = False,
        join_KR: bool = False,
    ) -> None:
        joined = dict(zip(PARTNERS, (join_AU, join_CA, join_GB, join_KR), strict=True))
        overrides = dashboard_overrides(
            tariff_rate=tariff_rate,
            floor_level_usd_per_kg=floor_level_usd_per_kg,
            floor_mechanism=floor_mechanism,
            reserve_budget_usd_million=reserve_budget_usd_million,
            export_quota_kt_per_yr=export_quota_kt_per_yr,
            china_pricing_mode=china_pricing_mode,
            min_compliant_share=min_compliant_share,
            partners=tuple(code for code, on in joined.items() if on),
        )
        super().__init__(BASELINE, rng=rng, overrides=overrides)
        self.seed = rng
        self.controls = {
            "seed": rng,
            "tariff on CN material": f"{tariff_rate:.0%}",
            "NdPr oxide price floor": f"US$ {floor_level_usd_per_kg:.0f}/kg, {floor_mechanism}"
            if floor_level_usd_per_kg > 0
            else "none",
            "strategic reserve": f"US$ {reserve_budget_usd_million:,.0f} M"
            if reserve_budget_usd_million > 0
            else "none",
            "CN export quota": f"{export_quota_kt_per_yr:.0f} kt/yr"
            if export_quota_kt_per_yr > 0
            else "none",
            "CN export pricing": china_pricing_mode,
            "min. compliant share": f"{min_compliant_share:.0%}",
            "alliance": ", ".join(self.config.alliance),
        }


MODEL_PARAMS: dict[str, Any] = {
    "rng": {"type": "SliderInt", "value": 0, "label": "Random seed", "min": 0, "max": 20},
    "tariff_rate": {
        "type": "SliderFloat",
        "value": 0.0,
        "label": "Tariff on CN material",
        "min": 0.0,
        "max": 1.0,
        "step": 0.05,
    },
    "floor_level_usd_per_kg": {
        "type": "SliderFloat",
        "value": 0.0,
        "label": "NdPr floor, US$/kg",
        "min": 0.0,
        "max": 200.0,
        "step": 5.0,
    },
    "floor_mechanism": {
        "type": "Select",
        "value": "price_gap_subsidy",
        "label": "Floor mechanism",
        "values": ["price_gap_subsidy", "border_adjusted", "offtake"],
    },
    "reserve_budget_usd_million": {
        "type": "SliderFloat",
        "value": 0.0,
        "label": "Reserve, US$ M",
        "min": 0.0,
        "max": 20_000.0,
        "step": 500.0,
    },
    "export_quota_kt_per_yr": {
        "type": "SliderFloat",
        "value": 0.0,
        "label": "CN export quota, kt/yr",
        "min": 0.0,
        "max": 150.0,
        "step": 5.0,
    },
    "china_pricing_mode": {
        "type": "Select",
        "value": "market",
        "label": "CN export pricing",
        "values": ["market", "strategic"],
    },
    "min_compliant_share": {
        "type": "SliderFloat",
        "value": 0.0,
        "label": "Min. compliant share",
        "min": 0.0,
        "max": 0.5,
        "step": 0.05,
    },
    **{
        f"join_{code}": {"type": "Checkbox", "value": False, "label": f"{code} joins the alliance"}
        for code in PARTNERS
    },
}


def snapshot(model: RareEarthModel) -> Result:
    """The run so far as a :class:`~abm.runs.Result` (metrics with dates, recent flows)."""
    log = model.flow_log
    model.flow_log = log[-MAP_MONTHS:]  # the map shows the last months only
    try:
        flows = model.flows_frame()
    finally:
        model.flow_log = log
    return Result(
        scenario=model.config,
        seed=getattr(model, "seed", 0),
        metrics=metrics_frame(model),
        flows=flows,
        model=model,
    )


def _figure(draw, size: tuple[float, float]) -> Any:
    """A plain component function (Mesa re-renders it every step) drawing one figure."""

    def component(model: RareEarthModel) -> Any:
        fig = Figure(figsize=size, layout="constrained")
        result = snapshot(model)
        if len(result.metrics) < 2:
            ax = fig.subplots()
            ax.text(0.5, 0.5, "press Step or ▶ to run", ha="center", va="center")
            ax.set_axis_off()
        else:
            draw(fig, result)
        return solara.FigureMatplotlib(fig, format="png", dpi=80)

    return component


def levers_in_force(model: DashboardModel) -> Any:
    """A card listing the levers the current model was built with, and its month."""
    rows = "\n".join(f"| {name} | {value} |" for name, value in model.controls.items())
    month = metrics_frame(model)["date"].iloc[-1]
    return solara.Markdown(
        f"**Month {month}** (tick {model.tick}). Levers in force (move them, then Reset):\n\n"
        f"| lever | value |\n|---|---|\n{rows}"
    )


def _prices(fig: Figure, result: Result) -> None:
    plots.plot_prices(fig.subplots(), result.metrics, plots.key_product(result))


def _trade_map(fig: Figure, result: Result) -> None:
    flow_plots.plot_trade_map(fig.subplots(), result, plots.key_product(result))


def _provenance(fig: Figure, result: Result) -> None:
    flow_plots.plot_provenance_sankey(fig.subplots(), result)


def _labels(title: str, ylabel: str):
    def post_process(ax) -> None:
        ax.set(title=title, ylabel=ylabel, xlabel="month since start")
        ax.grid(alpha=0.25)

    return post_process


def components() -> list[tuple[Any, int]]:
    """The dashboard's plots: (component, page)."""
    blocs = plots.BLOC_COLOURS
    return [
        (_figure(_prices, (6.5, 4.0)), 0),
        make_plot_component(
            {f"dependency_processed_cn_{b}": c for b, c in blocs.items()},
            post_process=_labels("Consumption processed in China", "share of consumption value"),
        ),
        make_plot_component(
            {f"shortage_{b}": c for b, c in blocs.items()},
            post_process=_labels("Shortage by bloc", "unmet share of need (value)"),
        ),
        (_figure(_trade_map, (8.0, 4.2)), 0),
        (levers_in_force, 0),
        (_figure(_provenance, (7.0, 5.5)), 1),
    ]


model = DashboardModel()
page = SolaraViz(
    model,
    components=components(),
    model_params=MODEL_PARAMS,
    name="Rare-earth alliance levers",
    play_interval=300,
)
page  # noqa: B018 (the page solara serves)
