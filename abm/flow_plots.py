"""Figures of trade flows: the trade-flow map and the provenance alluvial of a run.

- :func:`trade_map_figure`: countries at approximate geographic positions (lon/lat of where
  their rare-earth industry is, not borders), an arc per country pair with width = mean monthly
  flow and colour = the share of it whose route runs through China (mined, separated or made
  into magnets there, or sold into China) — green around China, red through it.
- :func:`provenance_sankey_figure`: an alluvial of end-use consumption over a period, mine
  country → separation country → consuming bloc, from the mass-balance provenance every
  buyer's consumption carries (``abm.metrics.consumption_frame``).

Both read a :class:`~abm.runs.Result`: the map its ``flows`` table, the alluvial its ``model``
(kept by ``run(..., keep_model=True)``, the default). Colours of blocs are those of
:data:`abm.plots.BLOC_COLOURS`.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, PathPatch
from matplotlib.path import Path

from abm import metrics
from abm.plots import BLOC_COLOURS

if TYPE_CHECKING:
    from abm.runs import Result

# approximate (lon, lat) of each country's rare-earth industry or population centre
POSITIONS = {
    "CN": (108.0, 33.0),
    "US": (-98.0, 38.0),
    "EU": (9.0, 49.0),
    "JP": (139.0, 37.0),
    "AU": (128.0, -26.0),
    "MY": (102.0, 3.0),
    "MM": (96.0, 22.0),
    "TH": (100.0, 14.0),
    "NG": (8.0, 9.0),
    "IN": (79.0, 21.0),
    "RU": (40.0, 60.0),
    "VN": (107.0, 14.0),
    "BR": (-50.0, -12.0),
    "KR": (128.0, 37.0),
    "CA": (-104.0, 54.0),
    "GB": (-2.0, 53.0),
    "EE": (25.0, 59.0),
    "FR": (2.0, 46.0),
    "DE": (10.0, 51.0),
    "GL": (-45.0, 68.0),
    "MG": (47.0, -19.0),
    "LA": (103.0, 19.0),
    "KZ": (67.0, 48.0),
    "ZA": (24.0, -29.0),
    "TZ": (35.0, -6.0),
    "MW": (34.0, -13.0),
    "AO": (18.0, -12.0),
    "MX": (-102.0, 23.0),
    "TR": (33.0, 39.0),
    "SA": (45.0, 24.0),
    "CL": (-71.0, -30.0),
    "ID": (113.0, -2.0),
    "PH": (122.0, 12.0),
    "SE": (17.0, 63.0),
    "NO": (10.0, 61.0),
    "ROW": (65.0, -22.0),  # rest of world: drawn in the Indian Ocean, not a place
}
REGION_POSITIONS = {
    "asia": (90.0, 30.0), "europe": (15.0, 50.0), "americas": (-80.0, 15.0),
    "oceania": (140.0, -25.0), "africa": (20.0, 0.0),
}  # fmt: skip
ROUTE_CMAP = LinearSegmentedColormap.from_list("route", ["#2ca02c", "#bbbb55", "#d62728"])


@cache
def land_outlines() -> list[np.ndarray]:
    """Coarse land outlines, (lon, lat) rings (Natural Earth 1:110m, public domain)."""
    text = resources.files("abm").joinpath("data", "land_110m.json").read_text()
    return [np.array(ring) for ring in json.loads(text)["rings"]]


def _country_bloc(result: Result) -> dict[str, str]:
    """Bloc of each country at the end of the run (membership may change by event)."""
    config = result.model.config if result.model is not None else result.scenario
    return {c: config.bloc_of(c) for c in result.scenario.countries}


def positions(result: Result) -> dict[str, tuple[float, float]]:
    """(lon, lat) of each country of the run's scenario.

    Countries without a known position are placed near their transport region's centre,
    spread on a small circle so they do not overlap.
    """
    out: dict[str, tuple[float, float]] = {}
    for i, (code, country) in enumerate(result.scenario.countries.items()):
        if code in POSITIONS:
            out[code] = POSITIONS[code]
        else:
            lon, lat = REGION_POSITIONS[country.region]
            angle = 2.4 * i  # golden-angle spread
            out[code] = (lon + 8 * np.cos(angle), lat + 8 * np.sin(angle))
    return out


def _period(frame: pd.DataFrame, ticks: tuple[int, int] | None) -> tuple[int, int]:
    """(first, last) tick of a period; default: the last 12 ticks of the table."""
    if frame.empty:
        raise ValueError("the run has no flows to show (run at least one tick)")
    last = int(frame["tick"].max())
    first, end = ticks if ticks is not None else (max(int(frame["tick"].min()), last - 11), last)
    if first > end:
        raise ValueError(f"ticks = {ticks}: the first tick is after the last")
    return first, end


def _date_of(result: Result, tick: int) -> str:
    m = result.metrics
    return str(m["date"].iloc[tick]) if 0 <= tick < len(m) else f"tick {tick}"


def country_flows(
    result: Result, product: str, ticks: tuple[int, int] | None = None
) -> pd.DataFrame:
    """Mean monthly flow of a product between countries over a period, with its route.

    Returns:
        One row per (seller country, buyer country): ``flow_t`` (t per month) and
        ``through_china`` (flow-weighted share whose route touched China: the material was
        mined or processed in China, or the buyer is in China).
    """
    flows = result.flows
    if product not in set(result.scenario.products):
        raise ValueError(f"product = {product!r}: not a product of this scenario")
    first, last = _period(flows, ticks)
    china = result.scenario.china
    sel = flows[(flows["product"] == product) & flows["tick"].between(first, last)]
    touched = np.where(
        (sel["seller_country"] == china) | (sel["buyer_country"] == china),
        1.0,
        sel["touched_cn_share"],
    )
    sel = sel.assign(cn_t=sel["flow_t"] * touched)
    out = sel.groupby(["seller_country", "buyer_country"], as_index=False)[["flow_t", "cn_t"]]
    out = out.sum()
    months = last - first + 1
    out["through_china"] = out["cn_t"] / out["flow_t"].where(out["flow_t"] > 0)
    out["flow_t"] /= months
    return out.drop(columns="cn_t")


def plot_trade_map(
    ax: Axes,
    result: Result,
    product: str,
    ticks: tuple[int, int] | None = None,
    widest_t: float | None = None,
) -> None:
    """Draw the trade-flow map of one product over a period into ``ax``.

    ``widest_t`` (t per month) is the flow drawn at full width (default: this map's largest
    trade flow); give maps that are compared the same value.
    """
    flows = country_flows(result, product, ticks)
    pos, blocs = positions(result), _country_bloc(result)
    unit = "t NdFeB" if product == "magnet" else "t REO" if product == "concentrate" else "t"
    domestic = flows[flows["seller_country"] == flows["buyer_country"]].set_index("seller_country")[
        "flow_t"
    ]
    trade = flows[flows["seller_country"] != flows["buyer_country"]].sort_values("flow_t")
    biggest = widest_t or max(float(trade["flow_t"].max()) if len(trade) else 0.0, 1e-9)
    shown = trade[trade["flow_t"] >= 0.002 * biggest]  # hide the logit's vanishing tails
    ax.add_collection(
        PolyCollection(land_outlines(), facecolor="#ececec", edgecolor="#c8c8c8", lw=0.5)
    )
    for row in shown.itertuples():
        width = 0.4 + 9.0 * row.flow_t / biggest
        share = 0.0 if np.isnan(row.through_china) else row.through_china
        ax.add_patch(
            FancyArrowPatch(
                pos[row.seller_country],
                pos[row.buyer_country],
                connectionstyle="arc3,rad=0.22",
                arrowstyle="-|>",
                mutation_scale=8 + 1.5 * width,
                lw=width,
                color=ROUTE_CMAP(share),
                alpha=0.75,
                shrinkA=6,
                shrinkB=6,
                zorder=2,
            )
        )
    biggest_home = max(float(domestic.max()) if len(domestic) else 0.0, 1e-9)
    for code, (lon, lat) in pos.items():
        size = 30 + 900 * np.sqrt(domestic.get(code, 0.0) / biggest_home)
        ax.scatter(lon, lat, s=size, color=BLOC_COLOURS[blocs[code]], alpha=0.55,
                   edgecolor="black", lw=0.6, zorder=3)  # fmt: skip
        ax.annotate(code, (lon, lat), xytext=(0, 0), textcoords="offset points", ha="center",
                    va="center", fontsize=7, weight="bold", zorder=4)  # fmt: skip
    ax.set(xlim=(-135, 165), ylim=(-45, 78), xlabel="longitude (°)", ylabel="latitude (°)")
    ax.set_aspect("equal")
    ax.grid(alpha=0.2)
    first, last = _period(result.flows, ticks)
    ax.set_title(
        f"Trade in {product}, {_date_of(result, first)} to {_date_of(result, last)}: "
        f"arc width = flow (full width {biggest:,.0f} {unit}/month)",
        fontsize=10,
    )
    handles = [
        Line2D([], [], color=ROUTE_CMAP(0.0), lw=4, label="route around China"),
        Line2D([], [], color=ROUTE_CMAP(0.5), lw=4, label="half through China"),
        Line2D([], [], color=ROUTE_CMAP(1.0), lw=4, label="route through China"),
        *[
            Line2D([], [], ls="", marker="o", ms=8, color=c, alpha=0.6, label=f"{b} country")
            for b, c in BLOC_COLOURS.items()
        ],
    ]
    ax.legend(handles=handles, fontsize=7, loc="lower left", title="circle area = domestic "
              "flow", title_fontsize=7)  # fmt: skip


def trade_map_figure(
    result: Result, product: str | None = None, ticks: tuple[int, int] | None = None
) -> Figure:
    """Trade-flow map of one product (default: NdPr oxide) over a period (default: last year).

    Args:
        result: a run.
        product: a product of the scenario, e.g. ``"magnet"``.
        ticks: (first, last) tick of the period, inclusive.

    """
    from abm.plots import key_product

    fig = Figure(figsize=(13, 6.2), layout="constrained")
    plot_trade_map(fig.subplots(), result, product or key_product(result), ticks)
    fig.suptitle(f"{result.scenario.name}: trade-flow map (mean monthly flows)")
    return fig


# ------------------------------------------------------------------ provenance alluvial


def consumption_provenance(
    result: Result,
    product: str | None = None,
    ticks: tuple[int, int] | None = None,
    min_share: float = 0.01,
) -> pd.DataFrame:
    """End-use consumption over a period by mine country, separation country and bloc.

    Args:
        result: a run with its model kept.
        product: a consumed product (default: every end use, in t REO).
        ticks: (first, last) tick, inclusive (default: the last 12 ticks).
        min_share: countries below this share of the total at their stage are grouped as
            ``"others"``.

    Returns:
        Columns ``mine_country``, ``separation_country``, ``bloc`` and ``t_per_yr``
        (annualised mean; t REO when ``product`` is None, else t of the product).
    """
    if result.model is None:
        raise ValueError("the provenance alluvial needs the run's model: run(keep_model=True)")
    frame = metrics.consumption_frame(result.model)
    first, last = _period(frame, ticks)
    frame = frame[frame["tick"].between(first, last)]
    if product is not None:
        if product not in set(result.scenario.products):
            raise ValueError(f"product = {product!r}: not a product of this scenario")
        frame = frame[frame["product"] == product]
    amount = "t_reo" if product is None else "t"
    total = frame[amount].sum()
    frame = frame.copy()
    for column in ("mine_country", "separation_country"):
        share = frame.groupby(column)[amount].sum() / max(total, 1e-300)
        small = share.index[share < min_share]
        frame.loc[frame[column].isin(small), column] = "others"
    keys = ["mine_country", "separation_country", "bloc"]
    out = frame.groupby(keys, as_index=False)[amount].sum()
    out["t_per_yr"] = out[amount] * 12 / (last - first + 1)
    return out.drop(columns=amount)


def _ribbon(x0: float, y0: tuple[float, float], x1: float, y1: tuple[float, float]) -> Path:
    """A band from the span y0 at x0 to the span y1 at x1 (cubic Bézier edges)."""
    mid = (x0 + x1) / 2
    vertices = [
        (x0, y0[0]), (mid, y0[0]), (mid, y1[0]), (x1, y1[0]),
        (x1, y1[1]), (mid, y1[1]), (mid, y0[1]), (x0, y0[1]), (x0, y0[0]),
    ]  # fmt: skip
    codes = [Path.MOVETO, *[Path.CURVE4] * 3, Path.LINETO, *[Path.CURVE4] * 3, Path.CLOSEPOLY]
    return Path(vertices, codes)


def plot_provenance_sankey(
    ax: Axes,
    result: Result,
    product: str | None = None,
    ticks: tuple[int, int] | None = None,
) -> None:
    """Draw the alluvial mine country → separation country → consuming bloc into ``ax``."""
    table = consumption_provenance(result, product, ticks)
    blocs = _country_bloc(result)
    columns = ["mine_country", "separation_country", "bloc"]
    total = table["t_per_yr"].sum()
    if total <= 0:
        raise ValueError("nothing was consumed in this period")
    gap = 0.02 * total
    spans: list[dict[str, list[float]]] = []  # per column: node -> [top, cursor left, right]
    for column in columns:
        sizes = table.groupby(column)["t_per_yr"].sum().sort_values(ascending=False)
        if "others" in sizes.index:
            sizes = pd.concat([sizes.drop("others"), sizes[["others"]]])
        top, nodes = 0.0, {}
        for node, size in sizes.items():
            nodes[node] = [top, top, top, size]
            top += size + gap
        spans.append(nodes)
    for stage in (0, 1):  # ribbons of each gap, ordered by their ends to limit crossings
        source, target = columns[stage], columns[stage + 1]
        rank_source = table[source].map({k: v[0] for k, v in spans[stage].items()})
        rank_target = table[target].map({k: v[0] for k, v in spans[stage + 1].items()})
        order = np.lexsort((rank_target.to_numpy(), rank_source.to_numpy()))
        for row in table.iloc[order].itertuples():
            colour = BLOC_COLOURS[blocs.get(row.separation_country, "other")]
            left, right = spans[stage][getattr(row, source)], spans[stage + 1][getattr(row, target)]
            y0 = (left[2], left[2] + row.t_per_yr)
            y1 = (right[1], right[1] + row.t_per_yr)
            left[2] += row.t_per_yr
            right[1] += row.t_per_yr
            path = _ribbon(stage + 0.03, y0, stage + 0.97, y1)
            ax.add_patch(PathPatch(path, color=colour, alpha=0.45, lw=0))
    unit = "kt REO/yr" if product is None else ("kt NdFeB/yr" if product == "magnet" else "kt/yr")
    for stage, nodes in enumerate(spans):
        for node, (top, *_, size) in nodes.items():
            bloc = node if stage == 2 else blocs.get(node, "other")
            ax.add_patch(
                PathPatch(
                    Path.unit_rectangle().transformed(_box(stage - 0.03, top, 0.06, size)),
                    color=BLOC_COLOURS.get(bloc, "#7f7f7f"),
                    lw=0,
                )
            )
            text = f"{node}  {size / 1000:,.1f}" if size >= 0.005 * total else ""
            ha, dx = ("right", -0.05) if stage == 0 else ("left", 0.05)
            ax.text(stage + dx, top + size / 2, text, ha=ha, va="center", fontsize=8)
    height = max(max(n[0] + n[3] for n in nodes.values()) for nodes in spans)
    ax.set(xlim=(-0.45, 2.45), ylim=(height * 1.02, -0.06 * total))
    ax.set_xticks([0, 1, 2], ["mined in", "separated in", "consumed by (bloc)"])
    ax.tick_params(axis="x", length=0, labelsize=10, pad=2)
    ax.set_yticks([])
    ax.set_ylabel(f"annual consumption, {unit} (labels in the same unit)")
    for side in ("left", "right", "bottom", "top"):
        ax.spines[side].set_visible(False)
    first, last = _period(metrics.consumption_frame(result.model), ticks)
    ax.set_title(
        f"Where {'end-use rare earths' if product is None else 'consumed ' + product} came from, "
        f"{_date_of(result, first)} to {_date_of(result, last)}: {total / 1000:,.1f} {unit}\n"
        "ribbon colour = bloc of the separation country",
        fontsize=10,
    )


def _box(x: float, y: float, width: float, height: float):
    from matplotlib.transforms import Affine2D

    return Affine2D().scale(width, height).translate(x, y)


def provenance_sankey_figure(
    result: Result, product: str | None = None, ticks: tuple[int, int] | None = None
) -> Figure:
    """Alluvial of end-use consumption: mine country → separation country → consuming bloc.

    Args:
        result: a run with its model kept.
        product: a consumed product such as ``"magnet"`` (default: every end use, t REO).
        ticks: (first, last) tick of the period, inclusive (default: the last 12 ticks).

    """
    fig = Figure(figsize=(11, 7), layout="constrained")
    plot_provenance_sankey(fig.subplots(), result, product, ticks)
    fig.suptitle(f"{result.scenario.name}: provenance of consumption (mass balance)")
    return fig
