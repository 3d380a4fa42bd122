"""Invariants the model keeps on every tick, and the error raised when one breaks.

:func:`check` runs at the end of every tick (``RareEarthModel.check_invariants``, on by
default; it costs a few percent of a tick). A broken invariant stops the run with an
:class:`InvariantError` whose one-line message names the tick, the agent and the quantity, e.g.
``tick 57: agent 'cn_sep' (oxide:NdPr output stock): qty_t = nan: not a finite number``,
instead of letting NaN or negative stock flow silently into the results.

Every tick, a few fused reductions (the least and greatest value of each group of quantities
with the same bounds, a row sum per sum of shares) tell whether the whole state
is sound; only if they cannot tell does the check go agent by agent, in the order below, to
find and name the first broken invariant. The fused pass never accepts a state the
agent-by-agent check would reject, so the error and its message are the same either way.

What is checked (MODEL.md §9, §11.1):

- every stock, shipment in transit, capacity, demand and cash is a finite number, and every
  quantity is non-negative;
- every ask is finite and positive; expected prices are finite and non-negative;
- lot attributes lie in [0, 1]; the provenance shares and the element composition of every
  stock that holds material sum to 1;
- mass balance (mined = held + in transit + consumed + recovery losses) and money balance (the
  accounts of the closed money system sum to zero), after warm-up.

Tolerances are looser than the test suite's (``tests/test_accounting.py`` asserts 1e-9): the
model must not stop a long run on rounding, only on a real error. Quantities may dip below
zero by ``NEGATIVE_TOLERANCE`` of the world's stock, shares may miss 1 by ``SHARE_TOLERANCE``,
balances may miss by ``BALANCE_TOLERANCE`` of the mass or money that moved. A 10,000-tick run
of a small world stays orders of magnitude inside these (``tests/test_robustness.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from abm import metrics, provenance, threads
from abm.world import BUYER, OUTPUT, RESERVE, Layout

if TYPE_CHECKING:
    from abm.model import RareEarthModel

NEGATIVE_TOLERANCE = 1e-9  # of the world's total stock (t)
SHARE_TOLERANCE = 1e-6  # absolute, on shares that must sum to 1 or lie in [0, 1]
BALANCE_TOLERANCE = 1e-6  # of the mass (t REO) or money (US$ M) that moved
# a sum of shares the fused pass computes differently may differ by rounding (at most a few
# hundred shares in [0, 1] summed: < 1e-12); it accepts sums this far inside the tolerance
SUM_MARGIN = 1e-9


class InvariantError(RuntimeError):
    """An invariant of the model broke; the message names the tick, agent and quantity."""

    def __init__(self, tick: int, agent: str, quantity: str, value: Any, problem: str) -> None:
        self.tick, self.agent, self.quantity, self.value = tick, agent, quantity, value
        self.problem = problem
        super().__init__(f"tick {tick}: {agent}: {quantity} = {value!r}: {problem}")


def row_owner(model: RareEarthModel, row: int) -> str:
    """Who holds a stock row, in words: ``agent 'cn_sep' (oxide:NdPr output stock)``."""
    w, s = model.world, model.world.stocks
    kind = s.owner_kind[row]
    if kind == RESERVE:
        name = "strategic_reserve"
    elif kind == BUYER:
        name = w.buyers.names[s.owner[row]]
    else:
        name = w.producers.names[s.owner[row]]
    role = "output" if s.role[row] == OUTPUT else "input"
    return f"agent '{name}' ({w.products[s.product[row]]} {role} stock)"


def _first_bad(ok: np.ndarray) -> int | None:
    """Index of the first ``False`` in ``ok``, or None."""
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if len(bad) else None


def _per_row(
    model: RareEarthModel,
    name: str,
    values: np.ndarray,
    lowest: float | None = None,
    positive: bool = False,
) -> None:
    """Per stock row: finite, at least ``lowest`` (if given), above 0 (if ``positive``)."""
    for ok, problem in (
        (np.isfinite(values), "not a finite number"),
        (values >= (-np.inf if lowest is None else lowest), f"below {lowest or 0:g}"),
        (values > 0 if positive else np.ones(len(values), dtype=bool), "not positive"),
    ):
        row = _first_bad(ok)
        if row is not None:
            raise InvariantError(
                model.tick, row_owner(model, row), name, float(values[row]), problem
            )


def _per_agent(
    model: RareEarthModel, names: list[str], quantity: str, values: np.ndarray, lowest: float | None
) -> None:
    """Per producer or buyer: finite, and at least ``lowest`` (if given)."""
    ok = np.isfinite(values) if lowest is None else np.isfinite(values) & (values >= lowest)
    i = _first_bad(ok)
    if i is not None:
        problem = "not a finite number" if not np.isfinite(values[i]) else f"below {lowest:g}"
        raise InvariantError(model.tick, f"agent '{names[i]}'", quantity, float(values[i]), problem)


def check(model: RareEarthModel) -> None:
    """Raise :class:`InvariantError` on the first invariant the model's state breaks.

    Args:
        model: a model between ticks (or during warm-up).

    Raises:
        InvariantError: naming the tick, the agent (or ``world``) and the quantity.

    """
    if not _sound(model):
        _locate(model)  # raises, naming the first broken invariant
    elif not model.warming_up:
        _check_balances(model)


def _within(values: list[np.ndarray], lowest: float, strictly: bool = False) -> bool:
    """Every value finite and at least ``lowest`` (above it if ``strictly``): a min and a max.

    NaN makes both comparisons false; ±inf breaks one bound.
    """
    every = np.concatenate(values) if len(values) > 1 else values[0]
    if len(every) == 0:
        return True
    least = every.min()
    return bool((least > lowest if strictly else least >= lowest) and every.max() < np.inf)


def _sound(model: RareEarthModel) -> bool:
    """Whether every per-row and per-agent invariant holds, in a few fused passes.

    True only if :func:`_locate` would find nothing (the balances are checked apart). False
    may also mean "too close to a tolerance to tell": :func:`_locate` then decides.
    """
    w, s, p, b = model.world, model.world.stocks, model.world.producers, model.world.buyers
    qty = s.qty_t  # per row
    if len(qty) and qty.min() >= 0.0:  # |qty| is qty: the sum of magnitudes in one pass
        scale_t = qty.sum()  # +inf or nan if a quantity is
    else:
        scale_t = np.abs(qty).sum()
    if not np.isfinite(scale_t):
        return False
    lowest = -NEGATIVE_TOLERANCE * max(float(scale_t), 1.0)  # as in :func:`_locate`
    out = s.role == OUTPUT  # asks only mean something on output rows
    attrs = s.attrs  # per row × attribute
    if not (
        _within([qty, w.transit_t.sum(axis=0), p.output_t], lowest)
        and _within([s.ask_usd_per_kg[out]], 0.0, strictly=True)
        and _within(
            [
                s.export_ask_usd_per_kg[out],
                s.expected_price_usd_per_kg,
                p.capacity_t_per_yr,
                p.pending_capacity_t_per_yr,
                b.need_t,
            ],
            0.0,
        )
        and _within(
            [p.cash_usd_million, b.cash_usd_million, np.array([model.reserve.cash_usd_million])],
            -np.inf,
            strictly=True,
        )
    ):
        return False
    held = qty > 0  # per row
    step = max(provenance.CHUNK_CELLS // max(attrs.shape[1], 1), 1)  # rows judged at a time
    unsound: list[int] = []  # first rows of chunks found wanting (appended from any thread)

    def judge(part: slice) -> None:
        # chunks small enough to stay in cache through the passes over them
        for start in range(part.start, part.stop, step):
            rows = slice(start, min(start + step, part.stop))
            if not _attrs_sound(attrs[rows], held[rows], w.layout):
                unsound.append(start)
                return

    threads.run(judge, threads.even(len(qty), attrs.shape[1]))
    return not unsound


def _attrs_sound(attrs: np.ndarray, held: np.ndarray, layout: Layout) -> bool:
    """Whether some rows' attributes lie in [0, 1] and, where stock is held, sum to 1."""
    if attrs.size and not (attrs.min() >= -SHARE_TOLERANCE and attrs.max() <= 1 + SHARE_TOLERANCE):
        return False
    # provenance and composition of held stock sum to 1: a row sum over a view of the columns
    # (no copy, and no BLAS call, whose idle threads would spin on the other cores); its
    # rounding differs from :func:`_locate`'s sums by far less than SUM_MARGIN
    for columns in (slice(0, layout.n_origin), layout.composition):
        total = attrs[:, columns].sum(axis=1)[held]  # per held row
        if not np.abs(total - 1.0).max(initial=0.0) <= SHARE_TOLERANCE - SUM_MARGIN:
            return False
    return True


def _locate(model: RareEarthModel) -> None:
    """The checks agent by agent: raise on the first invariant broken, naming the agent."""
    w, s, p, b = model.world, model.world.stocks, model.world.producers, model.world.buyers
    scale_t = max(float(np.abs(s.qty_t).sum()) if np.isfinite(s.qty_t).all() else 1.0, 1.0)
    lowest = -NEGATIVE_TOLERANCE * scale_t
    _per_row(model, "qty_t", s.qty_t, lowest)
    _per_row(model, "in_transit_t", w.transit_t.sum(axis=0), lowest)
    out = s.role == OUTPUT  # asks only mean something on output rows
    _per_row(model, "ask_usd_per_kg", np.where(out, s.ask_usd_per_kg, 1.0), positive=True)
    _per_row(model, "export_ask_usd_per_kg", np.where(out, s.export_ask_usd_per_kg, 1.0), 0.0)
    _per_row(model, "expected_price_usd_per_kg", s.expected_price_usd_per_kg, 0.0)
    _check_lots(model)
    producers, buyers = list(p.names), list(b.names)
    _per_agent(model, producers, "capacity_t_per_yr", p.capacity_t_per_yr, 0.0)
    _per_agent(model, producers, "pending_capacity_t_per_yr", p.pending_capacity_t_per_yr, 0.0)
    _per_agent(model, producers, "output_t", p.output_t, lowest)
    _per_agent(model, producers, "cash_usd_million", p.cash_usd_million, None)
    _per_agent(model, buyers, "need_t", b.need_t, 0.0)
    _per_agent(model, buyers, "cash_usd_million", b.cash_usd_million, None)
    reserve_cash = np.array([model.reserve.cash_usd_million])
    _per_agent(model, [model.reserve.name], "cash_usd_million", reserve_cash, None)
    if not model.warming_up:
        _check_balances(model)


def _attribute_name(model: RareEarthModel, column: int) -> str:
    """What a lot attribute column means, in words."""
    layout = model.world.layout
    if column < layout.n_origin:
        mined, processed = layout.origin_pair(column)
        where = "unprocessed" if processed is None else layout.countries[processed]
        return f"provenance share (mined {layout.countries[mined]}, processed {where})"
    if column == layout.processed_cn:
        return "processed-in-China share"
    if column == layout.touched_cn:
        return "touched-China share"
    return f"composition share of {layout.elements[column - layout.composition.start]}"


def _check_lots(model: RareEarthModel) -> None:
    """Lot attributes in [0, 1]; provenance and composition of held stock sum to 1."""
    w, s = model.world, model.world.stocks
    attrs = s.attrs  # per row × attribute
    inside = np.isfinite(attrs) & (attrs >= -SHARE_TOLERANCE) & (attrs <= 1 + SHARE_TOLERANCE)
    row = _first_bad(inside.all(axis=1))
    if row is not None:
        column = _first_bad(inside[row])
        raise InvariantError(
            model.tick,
            row_owner(model, row),
            _attribute_name(model, column),
            float(attrs[row, column]),
            "outside [0, 1]",
        )
    held = np.flatnonzero(s.qty_t > 0)
    for quantity, columns in (
        ("provenance shares", slice(0, w.layout.n_origin)),
        ("element composition", w.layout.composition),
    ):
        total = attrs[held, columns].sum(axis=1)  # per held row
        i = _first_bad(np.abs(total - 1.0) <= SHARE_TOLERANCE)
        if i is not None:
            raise InvariantError(
                model.tick,
                row_owner(model, int(held[i])),
                quantity,
                float(total[i]),
                "sum is not 1",
            )


def _check_balances(model: RareEarthModel) -> None:
    """Mass and money balance of the whole world, relative to what moved."""
    w = model.world
    moved_t = max(model.mined_t_total + model.initial_reo_t, 1.0)
    mass = model.mass_balance_error_t()
    if not abs(mass) <= BALANCE_TOLERANCE * moved_t:
        raise InvariantError(
            model.tick,
            "world",
            "mass_balance_error_t",
            mass,
            f"mined REO is not held, in transit, consumed or lost (of {moved_t:.6g} t)",
        )
    moved_usd = (
        abs(model.accounts["operating_costs"])
        + float(np.abs(w.buyers.cash_usd_million).sum())
        + float(np.abs(w.producers.cash_usd_million).sum())
        + 1.0
    )
    money = model.money_balance_error_usd_million()
    metrics.keep_balances(model, mass, money)  # the metrics of this tick report them
    if not abs(money) <= BALANCE_TOLERANCE * moved_usd:
        raise InvariantError(
            model.tick,
            "world",
            "money_balance_error_usd_million",
            money,
            f"the accounts do not sum to zero (of US$ {moved_usd:.6g} M moved)",
        )
