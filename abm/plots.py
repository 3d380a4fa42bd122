"""Figures (matplotlib), each a function taking a run or sweep data and returning a Figure.

Run figures: :func:`summary_figure` (the one-page dashboard, written to every run folder as
``summary.png``), :func:`prices_figure`, :func:`dependency_figure`, :func:`capacity_figure`,
:func:`fan_chart` (replicates), :func:`comparison_figure` (scenarios side by side). Sweep
figures: :func:`sweep_heatmap`, :func:`sweep_fan_chart`, :func:`sensitivity_bars`. Trade
flows — the map and the provenance alluvial — are in :mod:`abm.flow_plots`.

Colours are fixed per bloc across every figure (:data:`BLOC_COLOURS`), prices per tier
(:data:`TIER_STYLES`); the x axis of a run is its calendar date (one tick = one month).
Each ``plot_*`` function draws one panel into a given ``Axes``, so figures compose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from abm.runs import Result

BLOC_COLOURS = {"alliance": "#1f77b4", "china": "#d62728", "other": "#7f7f7f"}
TIER_STYLES = {  # tier: (label, colour, line style)
    "cn_domestic": ("China domestic", "#d62728", "-"),
    "export_fob": ("China export FOB", "#ff7f0e", "-"),
    "alliance_landed": ("Alliance landed (all-in)", "#1f77b4", "-"),
    "compliant": ("Compliant (no CN link)", "#2ca02c", "--"),
}
SPREAD_COLOUR = "#ff7f0e"
STAGE_UNITS = {"mining": "kt REO/yr", "separation": "kt REO/yr", "magnets": "kt NdFeB/yr"}
DEPENDENCY_KINDS = {
    "mined": "mined in China",
    "separated": "separated in China",
    "processed": "processed in China (any stage)",
    "route": "route touched China",
}
FISCAL_STYLES = {  # metric prefix: (label, colour); sign: + money in, − money out
    "tariff_revenue": ("tariff revenue (+)", "#1f77b4"),
    "levy_revenue": ("border levy revenue (+)", "#17becf"),
    "floor_upside": ("floor upside taken (+)", "#9467bd"),
    "floor_subsidy": ("floor subsidy paid (−)", "#2ca02c"),
    "offtake_purchases": ("offtake purchases (−)", "#bcbd22"),
    "reserve_spend": ("reserve purchases (−)", "#8c564b"),
    "reserve_carrying_cost": ("reserve carrying cost (−)", "#e377c2"),
}
_OUTFLOWS = ("floor_subsidy", "offtake_purchases", "reserve_spend", "reserve_carrying_cost")


# ------------------------------------------------------------------ helpers


def key_product(result: Result) -> str:
    """The headline product of a run: NdPr oxide when present, else the first oxide."""
    oxides = [p for p in result.scenario.products if p.startswith("oxide:")]
    preferred = [p for p in oxides if p.lower() == "oxide:ndpr"]
    return (preferred or oxides or list(result.scenario.products))[0]


def _tag(product: str) -> str:
    return product.replace(":", "_")


def _label(product: str) -> str:
    return f"{product.split(':')[1]} oxide" if product.startswith("oxide:") else product


def dates(metrics: pd.DataFrame) -> pd.DatetimeIndex:
    """The calendar month of each row of a metrics table (its ``date`` column)."""
    return pd.DatetimeIndex(pd.to_datetime(metrics["date"], format="%Y-%m"))


def _date_axis(ax: Axes) -> None:
    locator = mdates.AutoDateLocator(minticks=3, maxticks=7)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel("date (monthly ticks)")
    ax.grid(alpha=0.25)


def _has(metrics: pd.DataFrame, column: str) -> bool:
    return column in metrics and bool(metrics[column].notna().any())


# ------------------------------------------------------------------ panels


def plot_prices(ax: Axes, metrics: pd.DataFrame, product: str) -> None:
    """Prices of one product by tier, with the two-tier spread (export − domestic) shaded."""
    x, tag = dates(metrics), _tag(product)
    for tier, (label, colour, style) in TIER_STYLES.items():
        column = f"price_{tier}_{tag}"
        if _has(metrics, column):
            ax.plot(x, metrics[column], style, color=colour, lw=1.6, label=label)
    low, high = f"price_cn_domestic_{tag}", f"price_export_fob_{tag}"
    if _has(metrics, low) and _has(metrics, high):
        lo, hi = metrics[low].to_numpy(), metrics[high].to_numpy()
        ax.fill_between(
            x, lo, hi, where=hi > lo, color=SPREAD_COLOUR, alpha=0.2, label="two-tier spread"
        )
    unit = "US$/kg REO" if product == "concentrate" else "US$/kg"
    ax.set(title=f"Prices of {_label(product)} by tier", ylabel=unit)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="best")
    _date_axis(ax)


def plot_dependency(ax: Axes, metrics: pd.DataFrame, kind: str = "processed") -> None:
    """Each bloc's dependency of one kind (share of consumption value, %)."""
    x = dates(metrics)
    for bloc, colour in BLOC_COLOURS.items():
        column = f"dependency_{kind}_cn_{bloc}"
        if _has(metrics, column):
            ax.plot(x, 100 * metrics[column], color=colour, lw=1.6, label=bloc)
    ax.set(
        title=f"Consumption {DEPENDENCY_KINDS[kind]}",
        ylabel="% of consumption (value)",
        ylim=(-2, 102),
    )
    ax.legend(fontsize=8, title="consuming bloc", title_fontsize=8, loc="best")
    _date_axis(ax)


def plot_capacity(ax: Axes, metrics: pd.DataFrame, stage: str) -> None:
    """Built capacity of one stage, stacked by bloc (kt/yr)."""
    x = dates(metrics)
    blocs = [b for b in BLOC_COLOURS if f"capacity_{stage}_{b}" in metrics]
    stack = [metrics[f"capacity_{stage}_{b}"].to_numpy() / 1000 for b in blocs]
    ax.stackplot(x, *stack, labels=blocs, colors=[BLOC_COLOURS[b] for b in blocs], alpha=0.85, lw=0)
    ax.set(title=f"{stage.capitalize()} capacity by bloc", ylabel=STAGE_UNITS[stage])
    ax.legend(fontsize=8, loc="upper left")
    _date_axis(ax)


def plot_capacity_lines(ax: Axes, metrics: pd.DataFrame) -> None:
    """Capacity of every stage and bloc on one log axis (line style = stage)."""
    x = dates(metrics)
    for stage, style in (("mining", ":"), ("separation", "-"), ("magnets", "--")):
        for bloc, colour in BLOC_COLOURS.items():
            column = f"capacity_{stage}_{bloc}"
            if column in metrics and metrics[column].max() > 0:
                ax.plot(x, metrics[column] / 1000, style, color=colour, label=f"{stage}, {bloc}")
    ax.set(
        title="Capacity by bloc and stage",
        ylabel="kt/yr (REO; magnets: NdFeB)",
        yscale="log",
    )
    ax.legend(fontsize=7, ncol=3, loc="lower center")
    _date_axis(ax)


def plot_shortage(ax: Axes, metrics: pd.DataFrame) -> None:
    """Unmet share of each bloc's end-use need (%)."""
    x = dates(metrics)
    for bloc, colour in BLOC_COLOURS.items():
        if _has(metrics, f"shortage_{bloc}"):
            ax.plot(x, 100 * metrics[f"shortage_{bloc}"], color=colour, lw=1.4, label=bloc)
    ax.set(title="Shortage: unmet share of end-use need", ylabel="% of need (value)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="best")
    _date_axis(ax)


def plot_china_shares(ax: Axes, metrics: pd.DataFrame) -> None:
    """China's share of world output by stage (%)."""
    x = dates(metrics)
    for stage, style in (("mining", ":"), ("separation", "-"), ("magnets", "--")):
        if _has(metrics, f"cn_share_{stage}"):
            ax.plot(
                x, 100 * metrics[f"cn_share_{stage}"], style, color="#d62728", lw=1.6, label=stage
            )
    ax.set(title="China's share of world output", ylabel="% of world output", ylim=(0, 101))
    ax.legend(fontsize=8, loc="lower left")
    _date_axis(ax)


def plot_fiscal(ax: Axes, metrics: pd.DataFrame) -> None:
    """Cumulative public money flows of the policies in force (US$ bn; outflows negative)."""
    x = dates(metrics)
    drawn = False
    for key, (label, colour) in FISCAL_STYLES.items():
        column = f"{key}_usd_million"
        if column in metrics and metrics[column].abs().sum() > 0:
            sign = -1.0 if key in _OUTFLOWS else 1.0
            ax.plot(x, sign * metrics[column].cumsum() / 1000, color=colour, label=label)
            drawn = True
    ax.plot(x, np.zeros(len(x)), color="black", lw=0.6)
    ax.set(title="Public money, cumulative", ylabel="US$ bn")
    if drawn:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(
            0.5,
            0.5,
            "no fiscal flows\n(no alliance policy in force)",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="0.4",
        )
    _date_axis(ax)


# ------------------------------------------------------------------ figures


def summary_figure(result: Result) -> Figure:
    """The dashboard page of a run: prices, dependency, shortage, capacity, China, money."""
    m = result.metrics
    fig = Figure(figsize=(16, 9), layout="constrained")
    axes = fig.subplots(2, 3)
    plot_prices(axes[0, 0], m, key_product(result))
    plot_dependency(axes[0, 1], m, "processed")
    plot_shortage(axes[0, 2], m)
    plot_capacity_lines(axes[1, 0], m)
    plot_china_shares(axes[1, 1], m)
    plot_fiscal(axes[1, 2], m)
    fig.suptitle(
        f"{result.scenario.name}: {m['date'].iloc[0]} to {m['date'].iloc[-1]}, seed {result.seed}",
        fontsize=13,
    )
    return fig


def prices_figure(result: Result, product: str | None = None) -> Figure:
    """Prices of one product (default: NdPr oxide) by tier, the two-tier spread shaded."""
    fig = Figure(figsize=(9, 5), layout="constrained")
    plot_prices(fig.subplots(), result.metrics, product or key_product(result))
    fig.suptitle(result.scenario.name)
    return fig


def dependency_figure(result: Result) -> Figure:
    """Each bloc's dependency on China: mined, separated, processed, route touched."""
    fig = Figure(figsize=(12, 7.5), layout="constrained")
    for ax, kind in zip(fig.subplots(2, 2).flat, DEPENDENCY_KINDS, strict=True):
        plot_dependency(ax, result.metrics, kind)
    fig.suptitle(f"{result.scenario.name}: dependency on China by consuming bloc")
    return fig


def capacity_figure(result: Result) -> Figure:
    """Built capacity by bloc at each stage: mining, separation, magnets."""
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    for ax, stage in zip(fig.subplots(1, 3), STAGE_UNITS, strict=True):
        plot_capacity(ax, result.metrics, stage)
    fig.suptitle(f"{result.scenario.name}: capacity by bloc and stage")
    return fig


COMPARISON_PANELS = {  # metric template: (title, unit, scale)
    "price_alliance_landed_{product}": ("Alliance landed price of {label}", "US$/kg", 1.0),
    "dependency_processed_cn_alliance": (
        "Alliance consumption processed in China",
        "% of consumption (value)",
        100.0,
    ),
    "capacity_separation_alliance": ("Alliance separation capacity", "kt REO/yr", 0.001),
    "shortage_alliance": ("Alliance shortage", "% of need (value)", 100.0),
}


def comparison_figure(results: Sequence[Result], product: str | None = None) -> Figure:
    """Scenarios side by side: alliance price, dependency, capacity and shortage over time.

    Args:
        results: one run per scenario (their names label the lines).
        product: the product whose alliance landed price is shown (default: NdPr oxide).

    """
    if not results:
        raise ValueError("comparison needs at least one run")
    product = product or key_product(results[0])
    fig = Figure(figsize=(15, 8.5), layout="constrained")
    colours = [f"C{i}" for i in range(10)]
    for ax, (template, (title, unit, scale)) in zip(
        fig.subplots(2, 2).flat, COMPARISON_PANELS.items(), strict=True
    ):
        column = template.format(product=_tag(product))
        for i, result in enumerate(results):
            m = result.metrics
            if column in m:
                style = "--" if result.scenario.name == "baseline" else "-"
                ax.plot(dates(m), scale * m[column], style, color=colours[i % 10], lw=1.4,
                        label=result.scenario.name)  # fmt: skip
        ax.set(title=title.format(label=_label(product)), ylabel=unit)
        ax.set_ylim(bottom=0)
        _date_axis(ax)
    fig.axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("Policy scenarios side by side (one seed each)")
    return fig


def replicate_table(runs: Sequence[Result] | pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric over replicates: a frame indexed by date, one column per replicate.

    Args:
        runs: results of replicate runs, or a long table with columns ``date``, ``seed``
            (or ``replicate``) and the metric.
        metric: a metric name.

    """
    if isinstance(runs, pd.DataFrame):
        rep = "seed" if "seed" in runs else "replicate"
        if metric not in runs or rep not in runs or "date" not in runs:
            raise ValueError(f"replicate table needs columns date, {rep} and {metric!r}")
        return runs.pivot_table(index="date", columns=rep, values=metric)
    if not runs:
        raise ValueError("fan chart needs at least one run")
    missing = [r.seed for r in runs if metric not in r.metrics]
    if missing:
        raise ValueError(f"metric {metric!r} is not in the runs with seeds {missing}")
    return pd.DataFrame({r.seed: r.metrics.set_index("date")[metric] for r in runs}).rename_axis(
        columns="seed"
    )


def plot_fan(
    ax: Axes,
    table: pd.DataFrame,
    colour: str = "#1f77b4",
    label: str | None = None,
    scale: float = 1.0,
) -> None:
    """Median, 25–75 % and 5–95 % bands over replicates (columns) of a date-indexed table."""
    x = pd.DatetimeIndex(pd.to_datetime(table.index, format="%Y-%m"))
    values = table.to_numpy(dtype=float) * scale  # per date × replicate
    q05, q25, q50, q75, q95 = np.nanquantile(values, [0.05, 0.25, 0.5, 0.75, 0.95], axis=1)
    ax.fill_between(x, q05, q95, color=colour, alpha=0.15, lw=0, label="5–95 %")
    ax.fill_between(x, q25, q75, color=colour, alpha=0.35, lw=0, label="25–75 %")
    ax.plot(x, q50, color=colour, lw=1.8, label=f"median{f' ({label})' if label else ''}")
    _date_axis(ax)


def fan_chart(
    runs: Sequence[Result] | pd.DataFrame,
    metric: str,
    unit: str | None = None,
    title: str | None = None,
    colour: str = "#1f77b4",
) -> Figure:
    """Fan chart of one metric over replicate runs (median and quantile bands).

    Args:
        runs: results of replicate runs, or a long table (see :func:`replicate_table`).
        metric: a metric name; share metrics (unit "share") are shown in %.
        unit: the y-axis unit (default: guessed from the metric name).
        title: the title (default: the metric name and the number of replicates).
        colour: colour of the bands.

    """
    table = replicate_table(runs, metric)
    share = metric.startswith(("dependency_", "shortage_", "fill_rate_", "cn_share_"))
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.subplots()
    plot_fan(ax, table, colour, scale=100.0 if share else 1.0)
    ax.set(
        ylabel=unit or ("%" if share else _guess_unit(metric)),
        title=title or f"{metric} over {table.shape[1]} replicates",
    )
    ax.legend(fontsize=8, loc="best")
    return fig


def _guess_unit(metric: str) -> str:
    if metric.startswith(("price_", "two_tier_spread_")):
        return "US$/kg"
    if metric.startswith("capacity_"):
        return "t/yr"
    if metric.endswith("_usd_million"):
        return "US$ M per month"
    if metric.endswith("_t") or "_t_" in metric:
        return "t"
    return metric


# ------------------------------------------------------------------ sweeps


def _bloc_of(name: str) -> str | None:
    return next((b for b in BLOC_COLOURS if name.endswith(f"_{b}")), None)


def sweep_heatmap(
    table: pd.DataFrame, x: str, y: str, outcomes: Sequence[str], stat: str = "mean"
) -> Figure:
    """Outcomes over two swept parameters: one heatmap panel per outcome.

    Args:
        table: the tidy aggregate of a sweep (:func:`abm.analysis.aggregate`): parameter
            columns, ``outcome`` and the statistic column.
        x: parameter on the x axis.
        y: parameter on the y axis.
        outcomes: outcomes to show, one panel each.
        stat: which statistic over replicates (``mean``, ``q50``, ``std`` …); other swept
            parameters are averaged over.

    """
    n = len(outcomes)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = Figure(figsize=(4.8 * cols, 3.9 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, outcome in zip(axes, outcomes, strict=False):
        grid = table[table["outcome"] == outcome].groupby([y, x], sort=True)[stat].mean().unstack(x)
        image = ax.imshow(grid.to_numpy(dtype=float), origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(
            range(grid.shape[1]),
            [f"{v:g}" if isinstance(v, float) else str(v) for v in grid.columns],
            fontsize=8,
        )
        ax.set_yticks(
            range(grid.shape[0]),
            [f"{v:g}" if isinstance(v, float) else str(v) for v in grid.index],
            fontsize=8,
        )
        for (i, j), value in np.ndenumerate(grid.to_numpy(dtype=float)):
            light = np.isfinite(value) and image.norm(value) > 0.6  # dark text on light cells
            ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=8,
                    color="black" if light else "white")  # fmt: skip
        ax.set(xlabel=x, ylabel=y, title=f"{outcome} ({stat})")
        ax.title.set_fontsize(9)
        fig.colorbar(image, ax=ax, shrink=0.85, label=f"{stat} over replicates")
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig


def sweep_fan_chart(
    metrics: pd.DataFrame, metric: str, groups: pd.Series | None = None, title: str | None = None
) -> Figure:
    """Fan chart of one metric across the runs of a sweep, one band per group.

    Args:
        metrics: the sweep's long metrics table (``run_id``, ``date``, metrics).
        metric: the metric to show.
        groups: optional label per run id (e.g. a parameter's value): one band per label;
            default: one band over every run, in its bloc's colour if it has one.
        title: the title (default: the metric and the number of runs).

    """
    share = metric.startswith(("dependency_", "shortage_", "fill_rate_", "cn_share_"))
    long = metrics[["run_id", "date", metric]].rename(columns={"run_id": "replicate"})
    labels = groups.reindex(long["replicate"].unique()) if groups is not None else None
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.subplots()
    if labels is None:
        colour = BLOC_COLOURS.get(_bloc_of(metric) or "", "#1f77b4")
        plot_fan(ax, replicate_table(long, metric), colour, scale=100.0 if share else 1.0)
    else:
        palette = _colours(len(labels.unique()))
        for colour, (label, runs) in zip(palette, labels.groupby(labels), strict=False):
            subset = long[long["replicate"].isin(runs.index)]
            plot_fan(
                ax,
                replicate_table(subset, metric),
                colour,
                f"{labels.name}={label}",
                scale=100.0 if share else 1.0,
            )
    ax.set(
        ylabel="%" if share else _guess_unit(metric),
        title=title or f"{metric} across {long['replicate'].nunique()} runs",
    )
    ax.legend(fontsize=7, loc="best", ncol=2)
    return fig


def _colours(n: int) -> list[str]:
    """``n`` distinguishable colours (tab10, then viridis)."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    return [colormaps["viridis"](i / max(n - 1, 1)) for i in range(n)]


def sensitivity_bars(indices: pd.DataFrame, outcomes: Sequence[str] | None = None) -> Figure:
    """Sensitivity of outcomes to parameters: Sobol S1 and ST, or Morris μ* and σ, as bars.

    Args:
        indices: :func:`abm.analysis.sobol_table` (``S1``, ``ST`` with ``*_conf``) or
            :func:`abm.analysis.morris_table` (``mu_star``, ``mu_star_conf``, ``sigma``).
        outcomes: outcomes to show, one panel each (default: all in the table).

    """
    outcomes = list(outcomes or indices["outcome"].unique())
    sobol = "ST" in indices
    bars = (
        [("S1", "S1_conf", "first order S1"), ("ST", "ST_conf", "total ST")]
        if sobol
        else [("mu_star", "mu_star_conf", "μ*"), ("sigma", None, "σ")]
    )
    n = max(len(outcomes), 1)
    cols = min(n, 2)
    rows = -(-n // cols)
    fig = Figure(figsize=(6.5 * cols, 3.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, outcome in zip(axes, outcomes, strict=False):
        part = indices[indices["outcome"] == outcome]
        y = np.arange(len(part))
        height = 0.38
        for k, (column, conf, label) in enumerate(bars):
            ax.barh(
                y + (k - 0.5) * height,
                part[column],
                height,
                xerr=None if conf is None else part[conf],
                label=label,
                color=("#1f77b4", "#ff7f0e")[k],
                alpha=0.85,
                capsize=2,
            )
        ax.set_yticks(y, part["parameter"], fontsize=8)
        ax.axvline(0, color="black", lw=0.6)
        ax.set(title=outcome, xlabel="index" if sobol else "elementary effect")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig
