"""Figures (matplotlib), each a function taking a result and returning a Figure.

Colours are fixed per bloc across every figure: :data:`BLOC_COLOURS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg") if matplotlib.get_backend().lower() == "agg" else None
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

if TYPE_CHECKING:
    from abm.runs import Result

BLOC_COLOURS = {"alliance": "#1f77b4", "china": "#d62728", "other": "#7f7f7f"}
TIER_STYLES = {
    "cn_domestic": ("China domestic", "#d62728", "-"),
    "export_fob": ("China export FOB", "#ff7f0e", "-"),
    "alliance_landed": ("Alliance landed", "#1f77b4", "-"),
    "compliant": ("Compliant material", "#2ca02c", "--"),
}


def _key_product(result: Result) -> str:
    """The headline product: NdPr oxide when present, else the first oxide."""
    products = result.scenario.products
    oxides = [p for p in products if p.startswith("oxide:")]
    preferred = [p for p in oxides if p.lower().startswith("oxide:ndpr")]
    return (preferred or oxides)[0].replace(":", "_")


def summary_figure(result: Result) -> Figure:
    """One page: prices by tier, dependency, capacity by bloc and stage, shortage."""
    m = result.metrics
    x = m.index.to_numpy()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    product = _key_product(result)

    ax = axes[0, 0]
    for tier, (label, colour, style) in TIER_STYLES.items():
        column = f"price_{tier}_{product}"
        if column in m and m[column].notna().any():
            ax.plot(x, m[column], style, color=colour, label=label)
    low, high = m.get(f"price_cn_domestic_{product}"), m.get(f"price_export_fob_{product}")
    if low is not None and high is not None:
        ax.fill_between(
            x, low, high, where=high > low, color="#ff7f0e", alpha=0.15, label="two-tier spread"
        )
    ax.set(title=f"Prices: {product.replace('_', ' ')}", xlabel="tick (month)", ylabel="US$/kg")
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    for bloc, colour in BLOC_COLOURS.items():
        column = f"dependency_processed_cn_{bloc}"
        if column in m:
            ax.plot(x, 100 * m[column], color=colour, label=f"{bloc}: processed in CN")
        column = f"dependency_separated_cn_{bloc}"
        if column in m:
            ax.plot(x, 100 * m[column], ":", color=colour, label=f"{bloc}: separated in CN")
    ax.set(
        title="Dependency on China (share of consumption value)",
        xlabel="tick (month)",
        ylabel="%",
        ylim=(-2, 102),
    )
    ax.legend(fontsize=8)

    ax = axes[1, 0]
    for stage, style in (("mining", ":"), ("separation", "-"), ("magnets", "--")):
        for bloc, colour in BLOC_COLOURS.items():
            column = f"capacity_{stage}_{bloc}"
            if column in m and m[column].max() > 0:
                ax.plot(x, m[column] / 1000, style, color=colour, label=f"{stage}, {bloc}")
    ax.set(
        title="Capacity by bloc and stage",
        xlabel="tick (month)",
        ylabel="kt/yr (REO; magnets: NdFeB)",
        yscale="log",
    )
    ax.legend(fontsize=7, ncol=2)

    ax = axes[1, 1]
    for bloc, colour in BLOC_COLOURS.items():
        column = f"shortage_{bloc}"
        if column in m:
            ax.plot(x, 100 * m[column], color=colour, label=bloc)
    ax.set(title="Shortage (unmet share of end-use need)", xlabel="tick (month)", ylabel="%")
    ax.legend(fontsize=8)
    fig.suptitle(f"{result.scenario.name}: seed {result.seed}, start {result.scenario.start}")
    return fig
