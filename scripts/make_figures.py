"""Write the figures the README shows, into docs/figures/ (committed as PNG).

Runs the baseline and the shipped policy scenarios (seed 0, 2025-01 to 2044-12, about a minute)
and draws: the baseline's one-page summary, the NdPr oxide trade-flow maps of the baseline and
of the full alliance package on one scale, the provenance of magnets consumed in the last year
of the full alliance package, and the policy scenarios side by side.

Usage: ``.venv/bin/python scripts/make_figures.py`` (after a change to the model or the figures).
"""

from __future__ import annotations

import time
from pathlib import Path

from matplotlib.figure import Figure

from abm import flow_plots, plots, run

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "figures"
SCENARIOS = (
    "baseline",
    "alliance_tariff",
    "price_floor_subsidy",
    "price_floor_border",
    "strategic_reserve",
    "full_alliance",
)
SEED = 0
DPI = 80


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {name: run(ROOT / "configs" / f"{name}.yaml", seed=SEED) for name in SCENARIOS}
    print(f"ran {len(results)} scenarios in {time.perf_counter() - started:.0f} s")

    def save(figure: Figure, name: str) -> None:
        figure.savefig(OUT / name, dpi=DPI)
        print(OUT / name)

    save(plots.summary_figure(results["baseline"]), "summary_baseline.png")

    pair = ("baseline", "full_alliance")
    widest = max(
        flow_plots.country_flows(results[name], "oxide:NdPr")
        .query("seller_country != buyer_country")["flow_t"]
        .max()
        for name in pair
    )
    maps = Figure(figsize=(13, 11), layout="constrained")
    for ax, name in zip(maps.subplots(2, 1), pair, strict=True):
        flow_plots.plot_trade_map(ax, results[name], "oxide:NdPr", widest_t=widest)
        ax.set_title(f"{name}: {ax.get_title()}", fontsize=10)
    maps.suptitle("Who trades NdPr oxide with whom, and through China or around it")
    save(maps, "trade_maps.png")

    save(
        flow_plots.provenance_sankey_figure(results["full_alliance"], product="magnet"),
        "provenance_magnets.png",
    )
    save(plots.comparison_figure(list(results.values())), "policies.png")


if __name__ == "__main__":
    main()
