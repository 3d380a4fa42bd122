"""Provenance mixing and relabelling (abm.provenance)."""

import numpy as np
import pytest

from abm import provenance
from abm.world import Layout

LAYOUT = Layout(countries=["CN", "US", "AU"], elements=["NdPr", "other"])


def lot(mine, processing, cn_processed=0.0, touched=0.0):
    attrs = np.zeros(LAYOUT.width)
    attrs[LAYOUT.origin_cell(mine, processing)] = 1.0
    attrs[LAYOUT.processed_cn] = cn_processed
    attrs[LAYOUT.touched_cn] = touched
    attrs[LAYOUT.composition] = [1.0, 0.0]
    return attrs


def test_mixing_is_mass_weighted_and_shares_sum_to_one():
    qty = np.array([30.0, 0.0])
    attrs = np.stack([lot(2, 1), lot(0, 0)])
    incoming = np.stack([lot(0, 0, 1.0, 1.0), lot(1, 1)])
    rows = np.array([0, 0])
    add = np.array([10.0, 60.0])
    provenance.mix_into(qty, attrs, rows, add, add[:, None] * incoming)
    assert qty[0] == 100.0
    origin = provenance.origin_matrix(attrs, LAYOUT)[0]
    np.testing.assert_allclose(origin[2, 1], 0.3)
    np.testing.assert_allclose(origin[0, 0], 0.1)
    np.testing.assert_allclose(origin[1, 1], 0.6)
    np.testing.assert_allclose(origin.sum(), 1.0)
    np.testing.assert_allclose(provenance.compliant_share(attrs[0], LAYOUT), 0.9)
    np.testing.assert_allclose(provenance.mined_in(attrs[0], LAYOUT, 0), 0.1)
    # an empty row receiving nothing is left alone
    np.testing.assert_array_equal(attrs[1], lot(0, 0))


def test_processing_moves_unprocessed_material_to_the_processor_country():
    concentrate = np.stack([lot(1, None), lot(2, None)])
    out = provenance.processed(concentrate, LAYOUT, np.array([0, 1]), china=0)
    origin = provenance.origin_matrix(out, LAYOUT)
    assert origin[0, 1, 0] == 1.0 and origin[0, 1, 3] == 0.0  # US ore separated in CN
    assert origin[1, 2, 1] == 1.0  # AU ore separated in US
    assert out[0, LAYOUT.processed_cn] == 1.0 and out[0, LAYOUT.touched_cn] == 1.0
    assert out[1, LAYOUT.processed_cn] == 0.0 and out[1, LAYOUT.touched_cn] == 0.0


def test_processing_keeps_an_earlier_processing_country():
    oxide = np.stack([lot(2, 1)])
    out = provenance.processed(oxide, LAYOUT, np.array([0]), china=0)  # magnets made in CN
    assert provenance.origin_matrix(out, LAYOUT)[0, 2, 1] == 1.0
    assert out[0, LAYOUT.touched_cn] == 1.0


# CN and AU mine, CN and US separate; JP only makes magnets
NARROW = Layout(
    countries=["CN", "US", "AU", "JP"],
    elements=["NdPr", "other"],
    cells=[(0, None), (2, None), (0, 0), (0, 1), (2, 0), (2, 1), (3, 3)],
)


def test_a_narrow_layout_keeps_its_cells_in_the_order_of_the_full_grid():
    assert NARROW.n_origin == 7 and NARROW.width == 7 + 2 + 2
    grid = [NARROW.origin_pair(cell) for cell in range(NARROW.n_origin)]
    assert grid == [(0, 0), (0, 1), (0, None), (2, 0), (2, 1), (2, None), (3, 3)]
    assert all(NARROW.origin_cell(m, s) == cell for cell, (m, s) in enumerate(grid))
    with pytest.raises(ValueError, match="mined in US, unprocessed"):
        NARROW.origin_cell(1, None)
    with pytest.raises(ValueError, match="mined in CN, separated in JP"):
        NARROW.origin_cell(0, 3)
    unprocessed = NARROW.n_countries  # origin_cells: the same cells, for arrays of countries
    mined = np.array([m for m, _ in grid])
    separated = np.array([unprocessed if s is None else s for _, s in grid])
    assert NARROW.origin_cells(mined, separated).tolist() == list(range(NARROW.n_origin))
    with pytest.raises(ValueError, match="mined in US, unprocessed"):
        NARROW.origin_cells(np.array([0, 1, 0]), np.array([0, unprocessed, 3]))


def test_a_narrow_layout_processes_and_reads_like_the_full_grid():
    full = Layout(countries=NARROW.countries, elements=NARROW.elements)
    shares = {(0, None): 0.5, (2, None): 0.25, (0, 1): 0.125, (3, 3): 0.125}
    after = []
    for layout in (NARROW, full):
        attrs = np.zeros((2, layout.width))
        for (m, s), share in shares.items():
            attrs[:, layout.origin_cell(m, s)] = share
        # lot 0 is separated in US; lot 1, with nothing unprocessed, goes to a magnet plant in JP
        attrs[1, [layout.origin_cell(0, None), layout.origin_cell(2, None)]] = 0.0
        after.append(provenance.processed(attrs, layout, np.array([1, 3]), china=0))
    narrow, wide = (
        provenance.origin_matrix(a, lay) for a, lay in zip(after, (NARROW, full), strict=True)
    )
    np.testing.assert_array_equal(narrow, wide)
    assert narrow[0, 0, 1] == 0.5 + 0.125 and narrow[0, 2, 1] == 0.25  # ore separated in US
    assert narrow[1, 0, 1] == 0.125 and narrow[1, 3, 3] == 0.125  # lot 1 as it was
    for country in range(4):
        for read in (provenance.mined_in, provenance.separated_in):
            np.testing.assert_allclose(
                read(after[0], NARROW, country), read(after[1], full, country), rtol=0, atol=1e-15
            )
