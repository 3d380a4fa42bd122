"""Row blocks on several threads (abm.threads): the split never changes a result.

Large sparse products and mixing are cut into bands of rows, several per thread. Every row is
computed from its own inputs in the same order, so results must be equal bit for bit (not
just close) whatever the number of threads; these tests lower the size worth splitting so
that small worlds split too.
"""

import multiprocessing
import threading
from itertools import pairwise

import numpy as np
import pytest

from abm import RareEarthModel, market, metrics, provenance, threads
from benchmarks.synthetic import synthetic_scenario


@pytest.fixture
def split_small(monkeypatch):
    """Split any work of at least 500 cells, so small arrays run on several threads.

    Logit shares are worked out 64 edges at a time, so small markets are cut into chunks too.
    """
    monkeypatch.setattr(threads, "MIN_CELLS", 500)
    monkeypatch.setattr(market, "LOGIT_CHUNK", 64)

    def use(n):
        monkeypatch.setenv(threads.ENV, str(n))

    return use


def test_thread_count_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.count() == 3
    monkeypatch.delenv(threads.ENV)
    assert threads.count() >= 1  # the cores this process may use


@pytest.mark.parametrize("raw", ["0", "two", "-1", "1.5"])
def test_a_bad_thread_count_is_named_in_one_line(monkeypatch, raw):
    monkeypatch.setenv(threads.ENV, raw)
    with pytest.raises(ValueError, match=rf"^ABM_THREADS = '{raw}': must be a whole number"):
        threads.count()


def test_bands_cover_every_row_once_with_about_equal_weight():
    weights = np.cumsum(np.r_[0, np.random.default_rng(0).integers(1, 40, 1000)])
    for blocks in (1, 2, 3, 7):
        bands = threads.bounds(weights, blocks)
        assert len(bands) == blocks
        assert bands[0].start == 0 and bands[-1].stop == 1000
        assert all(a.stop == b.start for a, b in pairwise(bands))
        shares = [weights[b.stop] - weights[b.start] for b in bands]
        assert max(shares) - min(shares) <= 2 * 40  # within a row or two of equal
    assert threads.bounds(np.array([0, 5]), 4) == [slice(0, 1)]  # one row: one band


@pytest.mark.parametrize(("n_threads", "chunk"), [(1, 50), (2, 50), (3, 7), (2, 10**6)])
def test_chunks_cover_every_row_once_in_order_on_each_thread(
    split_small, monkeypatch, n_threads, chunk
):
    split_small(n_threads)
    weights = np.cumsum(np.r_[0, np.random.default_rng(1).integers(1, 9, 600)])
    handed, seen = [], []  # the blocks and threads run_chunked asked for; the chunks as worked
    run = threads.run

    def recording(work, parts, workers=None):
        handed.append((parts, workers))
        run(work, parts, workers)

    monkeypatch.setattr(threads, "run", recording)
    threads.run_chunked(lambda rows: seen.append((threading.get_ident(), rows)), weights, chunk)
    pieces = sorted((rows for _, rows in seen), key=lambda s: s.start)
    assert pieces[0].start == 0 and pieces[-1].stop == 600
    assert all(a.stop == b.start for a, b in pairwise(pieces))  # every row once
    heaviest = max(weights[s.stop] - weights[s.start] for s in pieces)
    assert heaviest <= chunk + 8 or len(pieces) == 1  # about ``chunk`` each, within a row
    ((parts, workers),) = handed  # one call: the chunks in order, and the threads worth using
    assert parts == pieces
    assert workers == threads.n_threads(int(weights[-1])) == n_threads
    for thread in {ident for ident, _ in seen}:  # each thread took its chunks in order
        starts = [rows.start for ident, rows in seen if ident == thread]
        assert starts == sorted(starts)


def test_small_work_is_not_split(monkeypatch):
    monkeypatch.setenv(threads.ENV, "2")
    assert threads.n_threads(threads.MIN_CELLS - 1) == threads.n_blocks(threads.MIN_CELLS - 1) == 1
    assert threads.n_threads(10 * threads.MIN_CELLS) == 2  # never more than the threads
    assert threads.n_blocks(10 * threads.MIN_CELLS) == 2 * threads.PIECES  # several a thread
    monkeypatch.setenv(threads.ENV, "1")
    assert threads.n_blocks(10 * threads.MIN_CELLS) == 1  # one thread: one block


def test_a_thread_held_up_leaves_the_other_blocks_to_the_free_ones(monkeypatch):
    """Blocks go to whichever thread is free: one slow core does not hold up the work."""
    monkeypatch.setenv(threads.ENV, "2")
    blocks = list(range(12))
    done = {"held": [], "free": []}
    rest_done = threading.Event()
    workers = set()

    def work(block):
        workers.add(threading.get_ident())
        if block == 0:  # the thread that takes the first block is held until the rest are done
            assert rest_done.wait(timeout=30), "the free thread did not take the other blocks"
            done["held"].append(block)
            return
        done["free"].append(block)
        if len(done["free"]) == len(blocks) - 1:
            rest_done.set()

    threads.run(work, blocks)
    assert done["held"] == [0]  # the held thread worked its first block only
    assert done["free"] == blocks[1:]  # the other thread took every other block, in order
    assert len(workers) == 2  # two threads (ABM_THREADS), not one per block


def test_an_error_in_a_helper_thread_reaches_the_caller(split_small):
    split_small(3)

    def work(block):
        if block.start > 0:
            raise RuntimeError(f"band {block.start}")

    with pytest.raises(RuntimeError, match="band"):
        threads.run(work, threads.even(3000, 1))


@pytest.mark.parametrize("n_threads", [2, 3])
def test_routes_give_the_same_bits_on_any_number_of_threads(split_small, n_threads):
    rng = np.random.default_rng(5)
    attrs = rng.random((400, 9))
    dest = np.sort(rng.integers(0, 300, 5000))
    routes = provenance.Routes(dest, rng.integers(0, 400, 5000), len(attrs))
    qty = rng.random(5000) * (rng.random(5000) < 0.8)
    split_small(1)
    one_qty, one = routes.inflows(qty, attrs)
    split_small(n_threads)
    assert threads.n_threads(len(qty) * attrs.shape[1]) == n_threads
    many_qty, many = routes.inflows(qty, attrs)
    np.testing.assert_array_equal(many_qty, one_qty)
    np.testing.assert_array_equal(many, one)
    np.testing.assert_allclose(one, routes._tonnes @ attrs, rtol=1e-12)  # scipy's product
    reused = np.full_like(one, np.nan)  # an output array is overwritten, not added to
    assert routes.inflows(qty, attrs, out=reused)[1] is reused
    np.testing.assert_array_equal(reused, one)
    with pytest.raises(ValueError, match="out = array of shape"):
        routes.inflows(qty, attrs, out=np.zeros((3, 9)))


@pytest.mark.parametrize("contiguous", [True, False])
def test_mixing_gives_the_same_bits_on_any_number_of_threads(split_small, monkeypatch, contiguous):
    monkeypatch.setattr(provenance, "CHUNK_CELLS", 300)  # several cache chunks per band too
    rng = np.random.default_rng(6)
    qty, attrs = rng.random(3000) * 10, rng.random((3000, 8))
    rows = np.arange(200, 2600) if contiguous else np.sort(rng.choice(3000, 2000, replace=False))
    add = rng.random(len(rows)) * (rng.random(len(rows)) < 0.9)
    mass = add[:, None] * rng.random((len(rows), 8))
    results = []
    for n in (1, 2, 3):
        split_small(n)
        q, a = qty.copy(), attrs.copy()
        provenance.mix_into(q, a, rows, add, mass)
        results.append((q, a))
    for q, a in results[1:]:
        np.testing.assert_array_equal(q, results[0][0])
        np.testing.assert_array_equal(a, results[0][1])
    # and the plain mass-weighted average, all rows at once
    expected = attrs.copy()
    got = add > 0
    r = rows[got]
    expected[r] = (qty[r, None] * attrs[r] + mass[got]) / (qty[r] + add[got])[:, None]
    np.testing.assert_allclose(results[0][1], expected, rtol=1e-12)


def test_a_world_runs_the_same_on_one_and_on_two_threads(split_small, monkeypatch):
    runs, beside = [], []  # beside: per tick, its flow log was kept beside the metrics
    log = RareEarthModel._log_flows

    def logging(model):
        beside.append(threading.current_thread() is not threading.main_thread())
        log(model)

    monkeypatch.setattr(RareEarthModel, "_log_flows", logging)
    for n in (1, 2):
        split_small(n)
        beside.clear()
        model = RareEarthModel(synthetic_scenario(400, suppliers_per_buyer=6), rng=3)
        for _ in range(6):
            model.step()
        assert beside == [n > 1] * 6
        runs.append(
            (
                model.world.stocks.attrs.copy(),
                model.world.edges.flow_t.copy(),
                model.datacollector.get_model_vars_dataframe(),
                model.flows_frame(),
                metrics.consumption_frame(model),
            )
        )
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    for one, two in zip(runs[0][2:], runs[1][2:], strict=True):
        assert one.equals(two) and len(one) > 0


def test_an_error_in_the_log_kept_beside_reaches_the_caller(split_small, monkeypatch):
    split_small(2)
    model = RareEarthModel(synthetic_scenario(400, suppliers_per_buyer=6), rng=3)

    def broken(model):
        raise RuntimeError("log failed")

    monkeypatch.setattr(RareEarthModel, "_log_flows", broken)
    with pytest.raises(RuntimeError, match="log failed"):
        model.step()


def _split_in_child(queue):
    queue.put(
        float(
            provenance.Routes(np.arange(4000) // 4, np.arange(4000) % 50, 50)
            .inflows(np.ones(4000), np.ones((50, 3)))[1]
            .sum()
        )
    )


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_starts_its_own_helper_threads(split_small):
    # mesa.batch_run's process pool forks: the parent's helper threads do not exist there
    split_small(2)
    threads.run(lambda block: None, threads.even(4000, 1))  # the parent's pool exists
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_split_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0, "the child hung or failed using the parent's pool"
    assert queue.get(timeout=5) == 4000 * 3


def test_the_baseline_never_splits_its_work(monkeypatch):
    from tests.worlds import CONFIGS

    monkeypatch.setenv(threads.ENV, "8")
    splits = []
    run = threads.run

    def counting(work, blocks, workers=None):
        splits.append(len(blocks))
        run(work, blocks, workers)

    monkeypatch.setattr(threads, "run", counting)
    model = RareEarthModel(CONFIGS / "baseline.yaml", rng=2)
    for _ in range(6):
        model.step()
    assert splits and set(splits) == {1}  # too small to be worth a helper thread
