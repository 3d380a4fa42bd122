"""Figures: each returns a labelled Figure, keeps bloc colours, and shows the data it is given.

The trade-flow map's country table and the provenance alluvial's table are checked against
the run's own flows and consumption (mass is conserved to floating-point precision), the
fan chart's bands against the replicates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from abm import flow_plots, metrics, plots, run

SMALL = "configs/tests/small.yaml"
TICKS = 24


@pytest.fixture(scope="module")
def result():
    return run(SMALL, seed=1, ticks=TICKS)


@pytest.fixture(scope="module")
def replicates():
    return [run(SMALL, seed=s, ticks=12, keep_model=False) for s in range(4)]


def _labelled(fig: Figure) -> None:
    """Every axes that shows data has a title and axis labels (the unit is in the label)."""
    drawn = [ax for ax in fig.axes if ax.has_data()]
    assert drawn, "the figure is empty"
    for ax in drawn:
        assert ax.get_title(), "an axes has no title"
        assert ax.get_ylabel(), f"{ax.get_title()}: no y label"
        assert ax.get_xlabel() or ax.get_xticklabels(), f"{ax.get_title()}: no x label"


@pytest.mark.parametrize(
    "make",
    [
        plots.summary_figure,
        plots.prices_figure,
        plots.dependency_figure,
        plots.capacity_figure,
        flow_plots.trade_map_figure,
        lambda r: flow_plots.trade_map_figure(r, "magnet", ticks=(1, 6)),
        flow_plots.provenance_sankey_figure,
        lambda r: flow_plots.provenance_sankey_figure(r, "magnet"),
    ],
)
def test_run_figures_are_labelled_and_render(result, make, tmp_path) -> None:
    fig = make(result)
    assert isinstance(fig, Figure)
    _labelled(fig)
    fig.savefig(tmp_path / "figure.png", dpi=50)
    assert (tmp_path / "figure.png").stat().st_size > 5_000


def test_units_are_in_the_labels(result) -> None:
    fig = plots.summary_figure(result)
    labels = " ".join(ax.get_ylabel() for ax in fig.axes)
    for unit in ("US$/kg", "%", "kt/yr", "US$ bn"):
        assert unit in labels
    assert all(ax.get_xlabel() == "date (monthly ticks)" for ax in fig.axes)


def test_bloc_colours_are_the_same_in_every_figure(result) -> None:
    for fig in (plots.dependency_figure(result), plots.summary_figure(result)):
        for ax in fig.axes:
            for line in ax.get_lines():
                if line.get_label() in plots.BLOC_COLOURS:
                    assert to_hex(line.get_color()) == plots.BLOC_COLOURS[line.get_label()]


def test_two_tier_spread_is_shaded_only_where_export_exceeds_domestic() -> None:
    dates = [f"2030-{m:02d}" for m in range(1, 7)]
    domestic = np.array([50.0, 50, 50, 50, 50, 50])
    export = np.array([50.0, 50, 80, 90, 50, 50])  # a two-tier episode in months 3-4
    frame = pd.DataFrame(
        {"date": dates, "price_cn_domestic_oxide_X": domestic, "price_export_fob_oxide_X": export}
    )
    fig = Figure()
    ax = fig.subplots()
    plots.plot_prices(ax, frame, "oxide:X")
    shaded = [c for c in ax.collections if c.get_label() == "two-tier spread"]
    assert len(shaded) == 1
    # the shaded polygon's price range is the spread: from the domestic price to the peak
    ys = np.concatenate([p.vertices[:, 1] for p in shaded[0].get_paths()])
    assert ys.min() == pytest.approx(50.0) and ys.max() == pytest.approx(90.0)


def test_country_flows_conserve_the_runs_flows(result) -> None:
    period = (5, 16)
    table = flow_plots.country_flows(result, "oxide:NdPr", period)
    f = result.flows
    raw = f[(f["product"] == "oxide:NdPr") & f["tick"].between(*period)]
    months = period[1] - period[0] + 1
    assert table["flow_t"].sum() * months == pytest.approx(raw["flow_t"].sum(), rel=1e-12)
    assert table["through_china"].between(0, 1).all()
    china = result.scenario.china
    touching = (table["seller_country"] == china) | (table["buyer_country"] == china)
    assert (table.loc[touching, "through_china"] == 1.0).all()


def test_trade_map_positions_cover_every_country(result) -> None:
    pos = flow_plots.positions(result)
    assert set(pos) == set(result.scenario.countries)
    for lon, lat in pos.values():
        assert -180 <= lon <= 180 and -90 <= lat <= 90


def test_consumption_provenance_is_whole_and_conserved(result) -> None:
    model = result.model
    frame = metrics.consumption_frame(model)
    assert set(frame["tick"]) == set(range(1, TICKS + 1))
    last = frame[frame["tick"] == TICKS]
    consumed = model.world.buyers.consumed_t  # per buyer, this (last) tick
    assert last["t"].sum() == pytest.approx(consumed.sum(), rel=1e-9)

    table = flow_plots.consumption_provenance(result, ticks=(1, TICKS), min_share=0.0)
    total = frame["t_reo"].sum() * 12 / TICKS
    for column in ("mine_country", "separation_country", "bloc"):
        by_node = table.groupby(column)["t_per_yr"].sum()
        assert by_node.sum() == pytest.approx(total, rel=1e-9)
    assert set(table["mine_country"]) <= set(result.scenario.countries)


def test_figures_refuse_bad_requests_with_one_line(result) -> None:
    with pytest.raises(ValueError, match="product = 'oxide:Zz'"):
        flow_plots.trade_map_figure(result, "oxide:Zz")
    with pytest.raises(ValueError, match="first tick is after the last"):
        flow_plots.trade_map_figure(result, ticks=(10, 5))
    no_model = run(SMALL, seed=1, ticks=2, keep_model=False)
    with pytest.raises(ValueError, match="keep_model=True"):
        flow_plots.provenance_sankey_figure(no_model)


def test_fan_chart_bands_span_the_replicates(replicates) -> None:
    metric = "price_world_oxide_NdPr"
    table = plots.replicate_table(replicates, metric)
    assert table.shape == (13, 4)
    fig = plots.fan_chart(replicates, metric)
    _labelled(fig)
    ax = fig.axes[0]
    median = next(line for line in ax.get_lines() if line.get_label().startswith("median"))
    assert np.allclose(median.get_ydata(), table.median(axis=1).to_numpy())
    outer = next(c for c in ax.collections if c.get_label() == "5–95 %")
    ys = np.concatenate([p.vertices[:, 1] for p in outer.get_paths()])
    assert ys.min() >= table.min().min() - 1e-9 and ys.max() <= table.max().max() + 1e-9


def test_fan_chart_from_a_long_table_matches_the_results(replicates) -> None:
    metric = "shortage_alliance"
    long = pd.concat(
        [r.metrics[["date", metric]].assign(seed=r.seed) for r in replicates], ignore_index=True
    )
    assert plots.replicate_table(long, metric).equals(plots.replicate_table(replicates, metric))
    with pytest.raises(ValueError, match="not in the runs"):
        plots.fan_chart(replicates, "no_such_metric")
