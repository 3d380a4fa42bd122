"""The documentation stays in step with the code."""

from pathlib import Path

from abm import RareEarthModel
from abm.metrics import registry
from tests.worlds import CONFIGS

ROOT = Path(__file__).resolve().parent.parent


def test_metric_glossary_lists_every_metric_of_the_baseline():
    text = (ROOT / "docs" / "metrics.md").read_text()
    model = RareEarthModel(CONFIGS / "baseline.yaml", rng=0)
    missing = [m.name for m in registry(model) if f"`{m.name}`" not in text]
    assert not missing, f"run scripts/make_glossary.py; missing: {missing[:5]}"


def test_readme_quick_start_has_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make baseline" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
