"""Freed memory is kept for reuse (abm.memory): repeated allocations touch no fresh pages."""

import platform
import subprocess
import sys

import pytest

PROGRAM = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from abm.memory import keep_freed_memory
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def tick():  # the temporaries of a tick: arrays of some megabytes, freed at its end
    arrays = [np.ones(300_000 * (i + 1)) for i in range(6)]
    del arrays
for _ in range(3):
    tick()
before = faults()
for _ in range(20):
    tick()
print(faults() - before)
"""


def page_faults(mode: str, **env: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, env=env or None
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's allocator only")
def test_kept_memory_is_reused_instead_of_faulting_in_fresh_pages():
    default, kept = page_faults("default"), page_faults("keep")
    assert default > 1000  # glibc's default returns the arrays' memory and faults it back
    assert kept < default / 20


def test_the_setting_can_be_declined(monkeypatch):
    from abm import memory

    monkeypatch.setattr(memory, "_done", False)
    monkeypatch.setenv("ABM_RETURN_FREED_MEMORY", "1")
    assert memory.keep_freed_memory() is False


def test_arena_arrays_keep_their_values_and_never_overlap():
    import numpy as np

    from abm.memory import Arena

    arena = Arena()
    arena.FIRST_BYTES, arena.LARGEST_BYTES = 1 << 10, 1 << 14  # small chunks: many of them
    rng = np.random.default_rng(0)
    kept = []
    for i in range(300):
        dtype = [float, np.int32][i % 2]
        n = int(rng.integers(0, 900)) if i != 150 else 5000  # one larger than any chunk
        array = arena.take(n, dtype)
        assert array.dtype == dtype and array.shape == (n,)
        array[:] = i
        kept.append(array)
    for i, array in enumerate(kept):
        assert (array == i).all()  # nothing taken later wrote over it
    chunks = {id(a.base) for a in kept if len(a)}
    assert 20 < len(chunks) < 200  # chunks grow, and are shared by successive arrays


def test_the_edge_flow_log_is_kept_in_the_arena():
    import numpy as np

    from abm import RareEarthModel
    from tests.worlds import CONFIGS

    model = RareEarthModel(CONFIGS / "baseline.yaml", rng=1)
    for _ in range(3):
        model.step()
    e = model.world.edges
    entry = model.flow_log[-1]
    moving = np.flatnonzero(e.flow_t > 0)
    assert len(moving) < 0.5 * len(e.flow_t)  # the baseline keeps its moving edges by index
    np.testing.assert_array_equal(entry["edge"], moving)
    np.testing.assert_array_equal(entry["flow_t"], e.flow_t[moving])
    np.testing.assert_array_equal(entry["ask_by_row"], model.row_quoted_ask)
    np.testing.assert_array_equal(
        entry["touched_cn_by_row"], model.world.stocks.attrs[:, model.world.layout.touched_cn]
    )
    for name in ("edge", "flow_t", "touched_cn_by_row", "ask_by_row", "ask_edge", "ask_value"):
        assert isinstance(entry[name].base, np.ndarray)  # a view into an arena chunk
        assert not np.shares_memory(entry[name], model.flow_log[-2][name])
