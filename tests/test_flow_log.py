"""The flow log's resolutions (``flow_log``): every edge, country pairs, or none."""

import numpy as np
import pandas as pd
import pytest

from abm.model import RareEarthModel
from abm.scenario import ScenarioError, load_scenario
from tests.test_cli import SMALL, abm
from tests.worlds import CONFIGS

KEYS = ["tick", "product", "seller_country", "buyer_country"]


def _runs(ticks: int = 18) -> dict[str, RareEarthModel]:
    base = load_scenario(CONFIGS / "baseline.yaml")
    models = {
        level: RareEarthModel(base.model_copy(update={"flow_log": level}), rng=3)
        for level in ("edges", "countries", "none")
    }
    for model in models.values():
        for _ in range(ticks):
            model.step()
    return models


def test_country_log_is_the_edge_log_summed_per_product_and_country_pair():
    models = _runs()
    edges, countries = models["edges"].flows_frame(), models["countries"].flows_frame()
    assert list(countries.columns) == list(edges.columns)
    assert (countries["seller"] == countries["seller_country"]).all()
    weighted = edges.assign(
        ask=edges.flow_t * edges.ask_usd_per_kg,
        landed=edges.flow_t * edges.landed_usd_per_kg,
        touched=edges.flow_t * edges.touched_cn_share,
    )
    summed = weighted.groupby(KEYS)[["flow_t", "ask", "landed", "touched"]].sum().reset_index()
    both = summed.merge(countries, on=KEYS, how="outer", indicator=True)
    assert (both["_merge"] == "both").all()  # the same pairs each tick, no more, no fewer
    np.testing.assert_allclose(both["flow_t_y"], both["flow_t_x"], rtol=1e-12)
    for mean, total in (("ask_usd_per_kg", "ask"), ("landed_usd_per_kg", "landed")):
        np.testing.assert_allclose(both[mean], both[total] / both["flow_t_x"], rtol=1e-12)
    np.testing.assert_allclose(
        both["touched_cn_share"], both["touched"] / both["flow_t_x"], rtol=1e-12, atol=1e-15
    )


@pytest.mark.parametrize("dense", [0.0, 2.0], ids=["every-edge", "moving-edges"])
def test_both_record_forms_of_the_edge_log_give_the_same_frame(monkeypatch, dense):
    """A tick's record keeps every edge when most moved (``DENSE_LOG``), its moving edges by
    index otherwise; the frame is the same either way, row for row and bit for bit."""
    from abm import model as model_module
    from benchmarks.synthetic import synthetic_scenario

    def frames(scenario):
        model = RareEarthModel(scenario, rng=5)
        for _ in range(4):
            model.step()
        return model, model.flows_frame()

    world = synthetic_scenario(300)  # nearly every edge moves: records keep every edge
    for scenario in (load_scenario(CONFIGS / "baseline.yaml"), world):
        model, usual = frames(scenario)
        monkeypatch.setattr(model_module, "DENSE_LOG", dense)
        forced, frame = frames(scenario)
        monkeypatch.undo()
        assert all(("edge" in r) == (dense > 1) for r in forced.flow_log)
        pd.testing.assert_frame_equal(frame, usual)
        assert (frame["flow_t"] > 0).all()
        last = frame[frame["tick"] == frame["tick"].max()]
        assert len(last) == np.count_nonzero(model.world.edges.flow_t)
    assert all("edge" not in r for r in model.flow_log)  # the synthetic world's usual form


@pytest.mark.parametrize(
    "config",
    ["price_floor_border", "export_controls_2025", "china_strategic_pricing", "crisis_2010"],
)
def test_the_frames_prices_are_the_clearings_bit_for_bit(config):
    """The edge log keeps asks per seller with the edges a policy priced apart, levies, and
    the tick's edge terms by reference; the frame works out each edge's ask and landed cost
    from them. Here: border floors (levies and minimum asks), export controls (export asks),
    strategic export pricing, and dated events that replace the edge terms mid-run."""
    model = RareEarthModel(CONFIGS / f"{config}.yaml", rng=4)
    asks, landed = [], []
    for _ in range(40):
        model.step()
        moving = np.flatnonzero(model.world.edges.flow_t > 0)
        asks.append(model.edge_ask[moving])
        landed.append(model.edge_landed[moving])
    frame = model.flows_frame()
    np.testing.assert_array_equal(frame["ask_usd_per_kg"], np.concatenate(asks))
    np.testing.assert_array_equal(frame["landed_usd_per_kg"], np.concatenate(landed))
    assert all("ask_edge" in r for r in model.flow_log)  # some edges were priced apart
    if config == "price_floor_border":
        assert any("levy_edge" in r for r in model.flow_log)
    if config == "crisis_2010":  # events replaced the edge terms during the run
        assert len({tuple(map(id, r["terms"])) for r in model.flow_log}) > 1


def test_a_run_whose_edge_log_could_outgrow_memory_is_warned(monkeypatch):
    import warnings

    from abm import model as model_module

    # the baseline's log: at most 8 B per edge and 16 per stock row a tick, about 4.7 MB over
    # 240 ticks; on a machine of 16 MiB that is more than a quarter
    monkeypatch.setattr(model_module, "physical_memory_bytes", lambda: 16 << 20)
    base = load_scenario(CONFIGS / "baseline.yaml")
    with pytest.warns(UserWarning, match=r"flow_log: edges keeps up to .* 240 ticks .*countries"):
        RareEarthModel(base, rng=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RareEarthModel(base.model_copy(update={"flow_log": "countries"}), rng=0)
        RareEarthModel(base.model_copy(update={"ticks": 12}), rng=0)  # about 0.24 MB
        monkeypatch.setattr(model_module, "physical_memory_bytes", lambda: None)  # unknown
        RareEarthModel(base, rng=0)


def test_the_log_level_changes_no_metric_and_none_keeps_no_flows():
    models = _runs()
    metrics = {k: m.datacollector.get_model_vars_dataframe() for k, m in models.items()}
    pd.testing.assert_frame_equal(metrics["countries"], metrics["edges"])
    pd.testing.assert_frame_equal(metrics["none"], metrics["edges"])
    off = models["none"].flows_frame()
    assert off.empty and list(off.columns) == list(models["edges"].flows_frame().columns)
    assert len(models["none"].consumption_log) == len(models["edges"].consumption_log)


def test_an_unknown_log_level_is_a_one_line_error_naming_key_and_value():
    with pytest.raises(ScenarioError) as info:
        load_scenario(SMALL, ["flow_log=firms"])
    message = str(info.value)
    assert "flow_log" in message and "firms" in message and "\n" not in message


def test_a_run_without_flow_log_writes_a_complete_folder_with_empty_flows(tmp_path):
    out = tmp_path / "runs"
    done = abm("run", str(SMALL), "--ticks", "6", "--set", "flow_log=none", "--out", str(out))
    assert done.returncode == 0, done.stderr
    (folder,) = out.iterdir()
    assert pd.read_parquet(folder / "flows.parquet").empty
    assert not pd.read_parquet(folder / "metrics.parquet").empty


def test_country_means_are_the_sums_of_flow_times_price_edge_after_edge():
    """The country log's sums (scipy's kernel, no product array) are bit for bit the plain
    per-pair sums of ``flow × value`` in edge order (``np.bincount``)."""
    from abm import metrics

    model = _runs(6)["countries"]
    w, e = model.world, model.world.edges
    n_c = w.layout.n_countries
    key = (e.product * n_c + e.seller_country) * n_c + e.buyer_country
    total = np.bincount(key, e.flow_t, minlength=len(w.products) * n_c * n_c)
    cells = np.flatnonzero(total > 0)
    record = metrics.country_flows(model)
    np.testing.assert_array_equal(record["key"], cells)
    touched = w.stocks.attrs[e.seller, w.layout.touched_cn]
    for name, value in (
        ("ask_usd_per_kg", model.edge_ask),
        ("landed_usd_per_kg", model.edge_landed),
        ("touched_cn_share", touched),
    ):
        plain = np.bincount(key, e.flow_t * value, minlength=len(total))[cells] / total[cells]
        np.testing.assert_array_equal(record[name], plain, err_msg=name)


@pytest.mark.parametrize("arrow_strings", [True, False])
@pytest.mark.filterwarnings("ignore:The 'future.infer_string' option is deprecated")
def test_name_columns_are_the_column_pandas_builds_from_the_names(arrow_strings):
    """The frame's names are taken by index (by Arrow where pandas keeps strings there)."""
    from abm.metrics import _labels

    rng = np.random.default_rng(0)
    names = [f"buyer_{i}" for i in range(50)] + ["", "Ünïcode"]
    with pd.option_context("future.infer_string", arrow_strings):
        for index in (rng.integers(0, len(names), 1000), np.zeros(0, dtype=np.intp)):
            built = pd.Series(_labels(names, index))
            expected = pd.Series(np.array(names)[index])
            assert built.dtype == expected.dtype == pd.Series(["x"]).dtype
            pd.testing.assert_series_equal(built, expected)
