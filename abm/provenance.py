"""Provenance by mass balance (MODEL.md §9): mixing lots, relabelling on processing, compliance.

Lot attributes (see :class:`abm.world.Layout`) are mass-weighted averages, so mixing a lot into
a stock is the same operation for provenance shares, route flags and element composition.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse import _sparsetools

from abm import threads
from abm.world import Layout

CHUNK_CELLS = 1 << 17  # attribute cells mixed at a time (1 MiB: a core's cache holds them)


def run_starts(keys: np.ndarray) -> np.ndarray:
    """First position of each run of equal keys (in a sorted array, of each distinct key)."""
    new = np.empty(len(keys), dtype=bool)
    new[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=new[1:])
    return np.flatnonzero(new)


def run_lengths(starts: np.ndarray, n: int) -> np.ndarray:
    """Length of each run, from the runs' first positions in an array of ``n``.

    ``np.diff(starts, append=n)`` without its wrappers (a clearing makes one per call).
    """
    lengths = np.empty_like(starts)
    np.subtract(starts[1:], starts[:-1], out=lengths[:-1])
    lengths[-1:] = n - starts[-1:]
    return lengths


def _sorted_runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A stable sort of ``keys``: the order, the sorted keys, where each run of equals starts."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    return order, ordered, run_starts(ordered)


def group_matrix(
    keys: np.ndarray, runs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, sparse.csr_array]:
    """Distinct keys (increasing) and the group × lot matrix: 1 where the lot has the key.

    ``matrix @ values`` sums rows of ``values`` per key, each group in lot order (the sums of
    :func:`sum_by`). For keys that stay the same from tick to tick, build it once and reuse it.
    ``runs`` is :func:`_sorted_runs` of the keys if already at hand.
    """
    order, ordered, starts = _sorted_runs(keys) if runs is None else runs
    members = sparse.csr_array(
        (np.ones(len(keys)), order, np.append(starts, len(keys))), shape=(len(starts), len(keys))
    )  # per group × lot: 1 where the lot belongs to the group
    return ordered[starts], members


def sum_by(
    keys: np.ndarray,
    values: np.ndarray,
    runs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sum ``values`` (per lot, any trailing shape) over equal ``keys``: (unique keys, sums).

    A stable sort, then ``np.add.reduceat`` for one value per lot, or a sparse product for rows
    of values (:func:`group_matrix`; many times faster than ``reduceat`` or ``np.add.at`` along
    the first axis); each group is summed in lot order. Keys already unique and increasing are
    returned as they are. ``runs`` is :func:`_sorted_runs` of keys known to repeat or to be out
    of order (it skips the check and the sort).
    """
    if runs is None:
        if len(keys) < 2 or bool(np.all(keys[1:] > keys[:-1])):
            return keys, values
        runs = _sorted_runs(keys)
    if values.ndim == 1:
        order, ordered, starts = runs
        return ordered[starts], np.add.reduceat(values[order], starts)
    unique, members = group_matrix(keys, runs)
    return unique, (members @ values.reshape(len(keys), -1)).reshape(len(unique), *values.shape[1:])


class GroupSums:
    """Sums of per-item products ``a · b`` per group, item after item, without the products.

    The sums of ``np.bincount(group, a * b)`` bit for bit: scipy's kernel for a group × item
    matrix with one entry per item (``a``), times ``b``, adds ``a[i] * b[i]`` into the item's
    group in item order. Saves the product's array and bincount's pass to size its output.

    Args:
        group: per item, its group (fixed: build once, use every tick).
        n_groups: number of groups.

    """

    def __init__(self, group: np.ndarray, n_groups: int) -> None:
        index = np.intc if len(group) < np.iinfo(np.intc).max else np.intp
        self.n_groups = n_groups
        self._columns = np.arange(len(group) + 1, dtype=index)  # per item: its one entry
        self._rows = group.astype(index)  # per item: its group

    def of(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per group: the sum of ``a · b`` over its items (both per item)."""
        out = np.zeros(self.n_groups)
        _sparsetools.csc_matvec(
            self.n_groups,
            len(self._rows),
            self._columns,
            self._rows,
            np.ascontiguousarray(a, dtype=float),
            np.ascontiguousarray(b, dtype=float),
            out,
        )
        return out


def _add_product_rows(
    rows: slice,
    matrix: tuple[np.ndarray, np.ndarray, np.ndarray, int],
    x: np.ndarray,
    out: np.ndarray,
) -> None:
    """Add ``rows`` of a CSR matrix times ``x`` into the same rows of ``out``, in place.

    ``matrix`` is (indptr, indices, data, columns); ``x`` is columns × ``out``'s width, flat.
    scipy's own kernel for the product reads ``indptr``'s positions as they are, so a band of
    rows (one block of work) needs no matrix of its own; each row's sum runs over its entries in
    order, whatever the band.
    """
    indptr, indices, data, columns = matrix
    _sparsetools.csr_matvecs(
        rows.stop - rows.start,
        columns,
        out.shape[1],
        indptr[rows.start : rows.stop + 1],
        indices,
        data,
        x,
        out[rows].reshape(-1),
    )


class Routes:
    """Fixed links from source rows to destinations; sums what moves along them per destination.

    The attribute mass arriving at a destination, ``Σ qty · attrs[source]`` over its links, is
    one sparse matrix product (destinations × source rows, times the attribute table): its cost
    is links × attributes and no attribute row is copied per lot. The sparse structure is built
    once for links that stay the same from tick to tick (a market's edges); each call only puts
    in the tonnes.

    Args:
        dest: per link, its destination key (a row, or any integer that groups links).
        source: per link, its source row.
        n_rows: rows of the attribute tables the source rows index.

    """

    def __init__(self, dest: np.ndarray, source: np.ndarray, n_rows: int) -> None:
        ordered = len(dest) < 2 or bool(np.all(dest[1:] >= dest[:-1]))
        self.order = None if ordered else np.argsort(dest, kind="stable")  # per link
        dest = dest if self.order is None else dest[self.order]
        source = source if self.order is None else source[self.order]
        self.starts = run_starts(dest)  # per destination: its first link
        self.dest = dest[self.starts]  # per destination: its key (unique, increasing)
        self._tonnes = sparse.csr_array(
            (np.zeros(len(dest)), source, np.append(self.starts, len(dest))),
            shape=(len(self.starts), n_rows),
        )  # per destination × source row: tonnes moving (filled in by each call)

    def inflows(
        self, qty: np.ndarray, attrs: np.ndarray, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tonnes and attribute mass (t × attribute) arriving at each destination.

        Large products are split into bands of destinations, shared among threads
        (:mod:`abm.threads`); each destination's sum is the same whatever the split.

        Args:
            qty: per link, tonnes moving (zero where nothing moves).
            attrs: per source row × attribute, the lots' attributes.
            out: per destination × attribute, a C-contiguous array to write the attribute mass
                into (overwritten; a caller that keeps one per tick reuses its pages); a new
                array if not given.

        """
        moving = qty if self.order is None else qty[self.order]  # per link, by destination
        inflow = np.add.reduceat(moving, self.starts) if len(moving) else moving
        width = attrs.shape[1]
        if out is None:
            out = np.zeros((len(self.starts), width))
        elif out.shape == (len(self.starts), width) and out.flags.c_contiguous:
            out.fill(0.0)  # the kernel adds each product into it
        else:
            shape = (len(self.starts), width)
            raise ValueError(f"out = array of shape {out.shape}: needs a C-contiguous {shape}")
        t = self._tonnes
        t.data[:] = moving
        matrix = (t.indptr, t.indices, t.data, t.shape[1])
        flat = np.ascontiguousarray(attrs).ravel()
        # bands of destinations with about equal links, taken by the threads in turn
        bands = threads.bounds(t.indptr, threads.n_blocks(len(moving) * width))
        threads.run(lambda rows: _add_product_rows(rows, matrix, flat, out), bands)
        return inflow, out


def mix_into(
    qty: np.ndarray,
    attrs: np.ndarray,
    rows: np.ndarray,
    add_qty: np.ndarray,
    add_attr_mass: np.ndarray,
) -> None:
    """Mix incoming lots into stock rows, in place (mass-weighted).

    Args:
        qty: per row, tonnes on hand (updated).
        attrs: per row × attribute, lot attributes (updated).
        rows: per lot, destination row (may repeat).
        add_qty: per lot, tonnes.
        add_attr_mass: per lot × attribute, tonnes × attributes of the lot.

    """
    if len(rows) == 0:
        return
    target, inflow, inflow_attr = rows, add_qty, add_attr_mass  # per receiving row
    if len(rows) > 1 and not bool(np.all(rows[1:] > rows[:-1])):  # repeats, or out of order
        runs = _sorted_runs(rows)  # one sort for both sums
        target, inflow = sum_by(rows, add_qty, runs)
        _, inflow_attr = sum_by(rows, add_attr_mass, runs)  # per receiving row × attribute
    _mix_rows(qty, attrs, target, inflow, inflow_attr)


def _mix_rows(
    qty: np.ndarray,
    attrs: np.ndarray,
    target: np.ndarray,
    inflow: np.ndarray,
    inflow_attr: np.ndarray,
) -> None:
    """:func:`mix_into` for receiving rows that are distinct and increasing."""
    received = inflow > 0
    picked = None if received.all() else received.nonzero()[0]  # None: every row received
    n_rows = len(target) if picked is None else len(picked)
    if n_rows == 0:
        return
    width = attrs.shape[1]
    step = max(CHUNK_CELLS // width, 1)  # receiving rows mixed at a time

    def mix(part: slice) -> None:
        # chunks of rows small enough to stay in cache through the three passes over them (rows
        # that received nothing are left out chunk by chunk, not by copying the inflows)
        for start in range(part.start, part.stop, step):
            chunk = slice(start, min(start + step, part.stop))
            pick = chunk if picked is None else picked[chunk]
            receiving = target[pick]
            # rows that form one block (a market's buyers usually do) are updated in place
            block = receiving[-1] - receiving[0] == len(receiving) - 1
            where = slice(receiving[0], receiving[-1] + 1) if block else receiving
            new_qty = qty[where] + inflow[pick]
            lots = attrs[where]  # per receiving row × attribute: a view of a block, else a copy
            lots *= qty[where, None]
            lots += inflow_attr[pick]
            lots /= new_qty[:, None]
            if not block:
                attrs[where] = lots
            qty[where] = new_qty

    threads.run(mix, threads.even(n_rows, width))  # each row's arithmetic is its own


Shipment = tuple[np.ndarray, np.ndarray, np.ndarray]  # receiving rows, tonnes, attribute mass


class Merge:
    """Several shipments mixed into stocks in one call, as if their lots came one after another.

    The same as :func:`mix_into` on the shipments concatenated (each row's sums run over its
    lots in shipment order, then lot order), without the concatenation. How lots group into
    receiving rows depends only on the shipments' row arrays, which repeat from tick to tick (a
    market's legs), so it is worked out once per combination of row arrays and kept.

    Args:
        limit: combinations kept; past it, the store starts afresh.

    """

    def __init__(self, limit: int = 32) -> None:
        self.limit = limit
        self._buffer: np.ndarray | None = None  # the sums' memory, reused
        # per combination (ids of its row arrays): the arrays, then how their lots group
        self._plans: dict[tuple[int, ...], tuple[tuple[np.ndarray, ...], _MergePlan]] = {}

    def mix_into(self, qty: np.ndarray, attrs: np.ndarray, shipments: list[Shipment]) -> np.ndarray:
        """Mix the shipments into ``qty`` and ``attrs`` (in place); returns rows that got any."""
        parts = tuple(rows for rows, _, _ in shipments)
        plan = self._plan(parts)
        moving = np.concatenate([tonnes for _, tonnes, _ in shipments])[plan.order]
        inflow = np.add.reduceat(moving, plan.starts)  # per receiving row
        width = attrs.shape[1]
        inflow_attr = self._zeros(len(plan.target), width)  # per receiving row × attribute
        masses = [np.ascontiguousarray(mass).reshape(-1) for _, _, mass in shipments]

        def add(rows: slice) -> None:
            # ``members @ mass``, adding each shipment in turn: per row, the sum over the
            # concatenated lots in their order
            for flat, members in zip(masses, plan.links, strict=True):
                _add_product_rows(rows, members, flat, inflow_attr)

        threads.run(add, threads.even(len(plan.target), width))  # each row's sums are its own
        _mix_rows(qty, attrs, plan.target, inflow, inflow_attr)
        return plan.target[inflow > 0]

    def _zeros(self, rows: int, width: int) -> np.ndarray:
        """Zeros (rows × width) in the same memory each tick (a new large array faults per page)."""
        if self._buffer is None or self._buffer.size < rows * width:
            self._buffer = np.zeros(rows * width)
        out = self._buffer[: rows * width].reshape(rows, width)
        out.fill(0.0)
        return out

    def _plan(self, parts: tuple[np.ndarray, ...]) -> _MergePlan:
        key = tuple(map(id, parts))
        kept = self._plans.get(key)
        if kept is not None and all(a is b for a, b in zip(kept[0], parts, strict=True)):
            return kept[1]
        if len(self._plans) >= self.limit:
            self._plans.clear()
        plan = _MergePlan(parts)
        self._plans[key] = (parts, plan)  # holds the arrays, so their ids are not reused
        return plan


class _MergePlan:
    """How the lots of some shipments (their row arrays) group into receiving rows."""

    def __init__(self, parts: tuple[np.ndarray, ...]) -> None:
        rows = np.concatenate(parts)  # per lot, in shipment order
        self.order, ordered, self.starts = _sorted_runs(rows)
        self.target = ordered[self.starts]  # per receiving row: its stock row
        group = np.empty(len(rows), dtype=np.intp)  # per lot: its receiving row's position
        group[self.order] = np.repeat(
            np.arange(len(self.starts)), run_lengths(self.starts, len(rows))
        )
        self.links = []  # per shipment: CSR matrix (receiving row × its lots) of ones
        first = 0
        for part in parts:
            mine = group[first : first + len(part)]
            lots = np.argsort(mine, kind="stable")  # its lots by receiving row, in lot order
            indptr = np.searchsorted(mine[lots], np.arange(len(self.target) + 1)).astype(np.intc)
            self.links.append((indptr, lots.astype(np.intc), np.ones(len(part)), len(part)))
            first += len(part)


def processed(attrs: np.ndarray, layout: Layout, country: np.ndarray, china: int) -> np.ndarray:
    """Attributes of output made from input lots by processors in ``country``.

    Args:
        attrs: per lot × attribute, the inputs' attributes.
        layout: attribute layout.
        country: per lot, the processor's country.
        china: China's country index.

    Returns:
        Per lot × attribute: material not yet processed gets the processor's country as its
        processing country; the China flags are set where the processor is in China.
        Composition is left to the caller.

    """
    out = attrs.copy()
    unprocessed = layout.unprocessed_cells
    mass = out[:, unprocessed]  # per lot × unprocessed cell
    out[:, unprocessed] = 0.0
    # each lot's unprocessed mass moves to the cells of its processor's country; a magnet plant
    # in a country that separates nothing gets separated material only (nothing to move)
    target = layout.separated_cells[country]  # per lot × unprocessed cell: the cell, or -1
    lot, cell = np.nonzero(target >= 0)
    out[lot, target[lot, cell]] += mass[lot, cell]
    in_china = country == china
    out[in_china, layout.processed_cn] = 1.0
    out[in_china, layout.touched_cn] = 1.0
    return out


def origin_matrix(attrs: np.ndarray, layout: Layout) -> np.ndarray:
    """Provenance shares as (… × mining country × processing country-or-unprocessed).

    Every country has its row and column, zero where the layout keeps no cell.
    """
    n = layout.n_countries
    out = np.zeros((*attrs.shape[:-1], n, n + 1))
    out[..., layout.cell_mined, layout.cell_separated] = attrs[..., : layout.n_origin]
    return out


def mined_in(attrs: np.ndarray, layout: Layout, country: int) -> np.ndarray:
    """Share of each lot mined in ``country``."""
    # the cells run by mining country: the country's cells are a slice
    first, stop = np.searchsorted(layout.cell_mined, [country, country + 1])
    return attrs[..., first:stop].sum(axis=-1)


def separated_in(attrs: np.ndarray, layout: Layout, country: int) -> np.ndarray:
    """Share of each lot separated into oxides in ``country``."""
    return attrs[..., np.flatnonzero(layout.cell_separated == country)].sum(axis=-1)


def is_compliant(attrs: np.ndarray, layout: Layout, de_minimis_share: float) -> np.ndarray:
    """Per lot: counts as compliant (at most ``de_minimis_share`` of it touched China).

    Stocks are homogeneous mixtures, so a de minimis share is what lets a non-Chinese plant that
    took a sliver of Chinese ore still sell compliant material, as rules of origin allow.
    """
    return within_de_minimis(attrs[..., layout.touched_cn], de_minimis_share)


def within_de_minimis(touched_cn_share: np.ndarray, de_minimis_share: float) -> np.ndarray:
    """Per lot, from its share touched by China: counts as compliant (:func:`is_compliant`)."""
    return touched_cn_share <= de_minimis_share + 1e-12


def compliant_share(attrs: np.ndarray, layout: Layout) -> np.ndarray:
    """Share of each lot to which no Chinese mine or processor contributed."""
    return 1.0 - attrs[..., layout.touched_cn]
