"""Provenance mixing and relabelling (abm.provenance)."""

import numpy as np

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
