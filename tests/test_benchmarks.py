"""The benchmark suite's own arithmetic (benchmarks/__main__.py): which round is the figure."""

from benchmarks.__main__ import _median_round, fitted_exponent
from benchmarks.sweeps import DASK_ORDER, dask_speedup


def test_the_figure_is_the_median_round_with_every_round_beside_it():
    rounds = [{"tick_s": 0.40, "n": 1}, {"tick_s": 0.30, "n": 2}, {"tick_s": 0.33, "n": 3}]
    figure = _median_round(rounds, "tick_s")
    assert figure["n"] == 3 and figure["tick_s"] == 0.33  # one round's whole record
    assert figure["tick_s_rounds"] == [0.40, 0.30, 0.33]  # in the order they ran
    assert _median_round(rounds[:1], "tick_s")["n"] == 1
    assert _median_round(rounds[:2], "tick_s")["n"] == 1  # of two, the slower


def test_a_failed_round_is_reported_not_hidden():
    rounds = [{"tick_s": 0.3}, {"case": "scaling", "error": "MemoryError"}, {"tick_s": 0.4}]
    assert _median_round(rounds, "tick_s") == {"case": "scaling", "error": "MemoryError"}


def test_the_exponent_of_a_power_law_is_its_power():
    sizes = [1e3, 1e4, 1e5]
    assert abs(fitted_exponent(sizes, [2e-6 * n**0.9 for n in sizes]) - 0.9) < 1e-9


def test_the_sweep_speed_up_brackets_one_worker_between_two():
    assert DASK_ORDER == (2, 1, 2)  # a steady drift of the machine's speed cancels
    rates = {"abm.sweeps (Dask)": (80.0, 45.0, 100.0), "mesa.batch_run": (10.0, 99.0)}
    orders = {"abm.sweeps (Dask)": DASK_ORDER, "mesa.batch_run": (1, 2)}
    engines = [
        {"engine": engine, "workers": workers, "runs_per_min": rate}
        for engine in rates
        for workers, rate in zip(orders[engine], rates[engine], strict=True)
    ]
    assert dask_speedup(engines) == 90.0 / 45.0  # the mean of the two 2-worker sweeps; Mesa's apart
