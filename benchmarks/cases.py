"""The benchmark cases of issue #4; each runs in a fresh Python process of its own.

``python -m benchmarks.cases CASE [SIZE]`` runs one case and prints one JSON record, so the
import time is a cold import and the peak memory (``ru_maxrss``) is that case's alone. The
suite (``python -m benchmarks``) starts these processes and tabulates their records.

Cases:

- ``baseline`` — the calibrated baseline, 240 ticks: import, set-up (scenario, world, warm-up)
  and simulation timed apart; simulation with and without data collection (Mesa's
  ``DataCollector`` and the edge-flow log), best of a few repeats.
- ``scaling N`` — a synthetic world of N buyers (``benchmarks/synthetic.py``): set-up, then
  ticks per second and nanoseconds per edge per tick.
- ``clearing N`` — one real market clearing of the synthetic world of N buyers, by the
  vectorised ``abm.market.clear`` and by the per-agent reference ``tests.oracle``.

Times are wall-clock (``perf_counter``); CPU time (``process_time``) is recorded beside them:
wall well above CPU means other work shared the machine.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

START = time.perf_counter()
BASELINE_TICKS = 240
BASELINE_REPEATS = 5
# timed ticks (after one untimed tick): a window of at least 1.5 s, so that a blip of the
# machine (its speed drifts by a fifth within minutes) moves the mean less
SCALING_TICKS = {1_000: 240, 10_000: 45, 100_000: 10}
CLEARING_PRODUCT = "magnet"  # the end users' market: most of a synthetic world's edges


def _rss_mib() -> float:
    """Resident memory of this process now (MiB)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(run: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall and CPU seconds of ``run()``, and what it returned."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = run()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _import_abm() -> dict[str, float]:
    wall, cpu, _ = _timed(lambda: __import__("abm.model"))
    return {"import_s": wall, "import_cpu_s": cpu, "rss_after_import_mib": _rss_mib()}


def _timing_warm_up(model_class: type) -> dict[str, float]:
    """Make the model class record its warm-up time (set-up is timed as a whole otherwise)."""
    record: dict[str, float] = {}
    warm_up = model_class._warm_up

    def timed(self: Any, ticks: int) -> None:
        start = time.perf_counter()
        warm_up(self, ticks)
        record["warmup_s"] = time.perf_counter() - start

    model_class._warm_up = timed
    return record


def _without_collection(model: Any) -> Any:
    """The model with data collection off: no metrics collected, no edge flows logged."""
    model.datacollector.collect = lambda _model: None
    model._log_flows = lambda: None
    return model


def _timing_collection(model: Any) -> list[float]:
    """Make the model add the wall time it spends collecting data to the returned cell."""
    spent = [0.0]

    def timed(run: Callable[..., None]) -> Callable[..., None]:
        def run_timed(*args: Any) -> None:
            start = time.perf_counter()
            run(*args)
            spent[0] += time.perf_counter() - start

        return run_timed

    model.datacollector.collect = timed(model.datacollector.collect)
    model._log_flows = timed(model._log_flows)
    return spent


def baseline() -> dict[str, Any]:
    """Baseline, 240 ticks: import, set-up and simulation apart; cost of data collection."""
    record = _import_abm()
    from abm.model import DEFAULT_SCENARIO, RareEarthModel
    from abm.scenario import load_scenario

    warm = _timing_warm_up(RareEarthModel)
    record["scenario_s"], _, scenario = _timed(lambda: load_scenario(DEFAULT_SCENARIO))
    record["setup_s"], _, _ = _timed(lambda: RareEarthModel(scenario, rng=0))
    record["warmup_s"] = warm["warmup_s"]
    runs: dict[str, list[tuple[float, float]]] = {"collect": [], "no_collect": []}
    collecting = []  # per run with collection: share of its wall time spent collecting
    for repeat in range(BASELINE_REPEATS):
        for mode in ("collect", "no_collect") if repeat % 2 == 0 else ("no_collect", "collect"):
            model = RareEarthModel(scenario, rng=repeat)
            if mode == "no_collect":
                _without_collection(model)
            else:
                spent = _timing_collection(model)

            def simulate(model: Any = model) -> None:
                for _ in range(BASELINE_TICKS):
                    model.step()

            wall, cpu, _ = _timed(simulate)
            runs[mode].append((wall, cpu))
            if mode == "collect":
                collecting.append(spent[0] / (wall - spent[0]))
    world = model.world
    record.update(
        ticks=BASELINE_TICKS,
        repeats=BASELINE_REPEATS,
        edges=len(world.edges.seller),
        stock_rows=len(world.stocks.qty_t),
        attribute_width=world.layout.width,
        sim_s=min(wall for wall, _ in runs["collect"]),
        sim_cpu_s=min(cpu for _, cpu in runs["collect"]),
        sim_no_collect_s=min(wall for wall, _ in runs["no_collect"]),
        sim_no_collect_cpu_s=min(cpu for _, cpu in runs["no_collect"]),
        sim_all_s=[wall for wall, _ in runs["collect"]],
        sim_no_collect_all_s=[wall for wall, _ in runs["no_collect"]],
        # time inside collection over the rest of the same runs: immune to drift between runs
        collection_overhead=sorted(collecting)[len(collecting) // 2],
        peak_rss_mib=_peak_rss_mib(),
    )
    return record


def scaling(n_buyers: int, flow_log: str = "edges") -> dict[str, Any]:
    """Synthetic world of ``n_buyers``: set-up, ticks per second, ns per edge per tick.

    Metrics are collected every tick; ``flow_log`` is the scenario's flow-log resolution
    (``edges``, the default, or ``countries``, which firm-level worlds need: see docs/model.md).
    """
    record = _import_abm()
    from abm import threads
    from abm.model import RareEarthModel
    from abm.scenario import build_scenario
    from benchmarks.synthetic import synthetic_scenario_data

    warm = _timing_warm_up(RareEarthModel)
    record["generate_s"], _, data = _timed(lambda: synthetic_scenario_data(n_buyers))
    data["flow_log"] = flow_log
    record["validate_s"], _, scenario = _timed(lambda: build_scenario(data, "synthetic"))
    record["setup_s"], _, model = _timed(lambda: RareEarthModel(scenario, rng=0))
    record["warmup_s"] = warm["warmup_s"]
    record["warmup_ticks"] = scenario.market.warmup_ticks
    model.step()  # untimed: first-touch allocations
    ticks = SCALING_TICKS.get(n_buyers, 10)
    per_tick = []
    wall_total, cpu_total = 0.0, 0.0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(ticks):
        wall, cpu, _ = _timed(model.step)
        per_tick.append(wall)
        wall_total, cpu_total = wall_total + wall, cpu_total + cpu
    # pages of fresh memory touched a tick: mostly the edge log's; their cost is the machine's
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / ticks
    edges = len(model.world.edges.seller)
    record.update(
        n_buyers=n_buyers,
        flow_log=flow_log,
        threads=threads.count(),  # row bands of large products and mixing (abm.threads)
        n_mines=int((model.world.producers.stage == 0).sum()),
        n_plants=int((model.world.producers.stage > 0).sum()),
        edges=edges,
        stock_rows=len(model.world.stocks.qty_t),
        countries=model.world.layout.n_countries,
        attribute_width=model.world.layout.width,
        ticks=ticks,
        tick_s=wall_total / ticks,
        tick_cpu_s=cpu_total / ticks,
        tick_all_s=per_tick,
        ticks_per_s=ticks / wall_total,
        ns_per_edge_tick=wall_total / ticks / edges * 1e9,
        page_faults_per_tick=faults,
        peak_rss_mib=_peak_rss_mib(),
    )
    return record


def _capture_clearing(n_buyers: int) -> tuple[Any, ...]:
    """The arguments of one clearing of the end users' market, from a running world.

    Positional, in the order ``abm.market.clear`` and ``tests.oracle.clear_reference`` share:
    cost, seller, buyer, eligible, compliant, demand, minimum compliant share, available,
    beta, price scale, rounds.
    """
    import abm.model
    from abm.model import RareEarthModel
    from benchmarks.synthetic import synthetic_scenario

    model = RareEarthModel(synthetic_scenario(n_buyers, warmup_ticks=2), rng=0)
    for _ in range(2):
        model.step()
    edges = model.world.edges.market_slices[model.world.products.index(CLEARING_PRODUCT)]
    captured: list[Any] = []
    clear = abm.model.market.clear

    def capture(*args: Any, **kwargs: Any) -> Any:
        if len(args[0]) == edges.stop - edges.start and not captured:
            captured.extend(a.copy() if hasattr(a, "copy") else a for a in args[:11])
        return clear(*args, **kwargs)

    abm.model.market.clear = capture
    try:
        model.step()
    finally:
        abm.model.market.clear = clear
    return tuple(captured)


def clearing(n_buyers: int) -> dict[str, Any]:
    """Vectorised clearing against the per-agent reference, on one real market."""
    import numpy as np

    record = _import_abm()
    from abm import market
    from tests.oracle import clear_reference

    args = _capture_clearing(n_buyers)
    repeats = 20 if n_buyers <= 10_000 else 5
    vectorised = []
    for _ in range(repeats):
        wall, _, result = _timed(lambda: market.clear(*args))
        vectorised.append(wall)
    reference_s, _, (flow, orders, unmet) = _timed(lambda: clear_reference(*args))
    worst, agree = 0.0, True
    for mine, theirs in ((result.flow, flow), (result.orders, orders), (result.unmet, unmet)):
        theirs = np.asarray(theirs)
        worst = max(worst, float(np.max(np.abs(mine - theirs), initial=0.0)))
        agree &= bool(np.allclose(mine, theirs, rtol=1e-9, atol=1e-9))
    cost, _, _, _, _, demand, _, available, _, _, rounds = args
    record.update(
        n_buyers=n_buyers,
        edges=len(cost),
        buyers=len(demand),
        sellers=len(available),
        rounds=int(rounds),
        vectorised_s=min(vectorised),
        reference_s=reference_s,
        speedup=reference_s / min(vectorised),
        max_abs_diff_t=worst,
        total_demand_t=float(demand.sum()),
        agree_1e9=agree,
        peak_rss_mib=_peak_rss_mib(),
    )
    return record


CASES: dict[str, Callable[..., dict[str, Any]]] = {
    "baseline": baseline,
    "scaling": scaling,
    "clearing": clearing,
}


def main(argv: list[str]) -> int:
    """Run one case (``CASE [SIZE [FLOW_LOG]]``) and print its record as one JSON line."""
    case, *args = argv
    load = os.getloadavg()
    record = CASES[case](*(int(a) if a.isdigit() else a for a in args))
    record.update(
        case=case,
        process_s=time.perf_counter() - START,
        load_before=load[0],
        load_after=os.getloadavg()[0],
    )
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
