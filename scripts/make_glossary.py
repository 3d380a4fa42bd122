"""Write docs/metrics.md, the metric glossary, from abm.metrics."""

from pathlib import Path

from abm import RareEarthModel
from abm.metrics import glossary_markdown

ROOT = Path(__file__).resolve().parent.parent
HEADER = """# Metric glossary

Every column of `metrics.parquet` (one row per tick; tick 0 is the state after warm-up, before the
first simulated month). Names are part of the public API. Generated from `abm/metrics.py` by
`python scripts/make_glossary.py` for the baseline world; product names depend on the scenario
(`oxide:NdPr` becomes `oxide_NdPr`). A price with no trade behind it in a tick is NaN, not zero.
Blocs: `alliance` (the scenario's members), `china`, `other`. Stages: `mining`, `separation`,
`magnets`. Money in US$ million, quantities in t REO (magnets: t NdFeB), prices in US$/kg.

"""


def render() -> str:
    model = RareEarthModel(ROOT / "configs" / "baseline.yaml", rng=0)
    return HEADER + glossary_markdown(model) + "\n"


if __name__ == "__main__":
    (ROOT / "docs" / "metrics.md").write_text(render())
    print("wrote docs/metrics.md")
