"""Invariants the model keeps on every tick, and the error raised when one breaks.

:func:`check` runs at the end of every tick (``RareEarthModel.check_invariants``, on by
default; it costs a few percent of a tick). A broken invariant stops the run with an
:class:`InvariantError` whose one-line message names the tick, the agent and the quantity, e.g.
``tick 57: agent 'cn_sep' (oxide:NdPr output stock): qty_t = nan: not a finite number``,
instead of letting NaN or negative stock flow silently into the results.

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

from abm.world import BUYER, OUTPUT, RESERVE

if TYPE_CHECKING:
    from abm.model import RareEarthModel

NEGATIVE_TOLERANCE = 1e-9  # of the world's total stock (t)
SHARE_TOLERANCE = 1e-6  # absolute, on shares that must sum to 1 or lie in [0, 1]
BALANCE_TOLERANCE = 1e-6  # of the mass (t REO) or money (US$ M) that moved


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


def _first_bad(values: np.ndarray, ok: np.ndarray) -> int | None:
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if len(bad) else None


def _per_row(model: RareEarthModel, name: str, values: np.ndarray, lowest: float | None) -> None:
    """Finite everywhere, and at least ``lowest`` (if given), per stock row."""
    finite = np.isfinite(values)
    row = _first_bad(values, finite)
    if row is not None:
        raise InvariantError(
            model.tick, row_owner(model, row), name, float(values[row]), "not a finite number"
        )
    if lowest is not None:
        row = _first_bad(values, values >= lowest)
        if row is not None:
            raise InvariantError(
                model.tick, row_owner(model, row), name, float(values[row]), f"below {lowest:g}"
            )


def _per_agent(
    model: RareEarthModel, names: list[str], quantity: str, values: np.ndarray, lowest: float | None
) -> None:
    """Finite everywhere, and at least ``lowest`` (if given), per producer or buyer."""
    ok = np.isfinite(values) if lowest is None else np.isfinite(values) & (values >= lowest)
    i = _first_bad(values, ok)
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
    w, s, p, b = model.world, model.world.stocks, model.world.producers, model.world.buyers
    scale_t = max(float(np.abs(s.qty_t).sum()) if np.isfinite(s.qty_t).all() else 1.0, 1.0)
    lowest = -NEGATIVE_TOLERANCE * scale_t
    _per_row(model, "qty_t", s.qty_t, lowest)
    in_transit = w.transit_t.sum(axis=0)  # per row
    _per_row(model, "in_transit_t", in_transit, lowest)
    out = s.role == OUTPUT
    asks = np.where(out, s.ask_usd_per_kg, 1.0)
    _per_row(model, "ask_usd_per_kg", asks, None)
    if (asks <= 0).any():
        row = int(np.flatnonzero(asks <= 0)[0])
        raise InvariantError(
            model.tick, row_owner(model, row), "ask_usd_per_kg", float(asks[row]), "not positive"
        )
    _per_row(model, "export_ask_usd_per_kg", np.where(out, s.export_ask_usd_per_kg, 1.0), 0.0)
    _per_row(model, "expected_price_usd_per_kg", s.expected_price_usd_per_kg, 0.0)
    _check_lots(model)
    producers = list(p.names)
    _per_agent(model, producers, "capacity_t_per_yr", p.capacity_t_per_yr, 0.0)
    _per_agent(model, producers, "pending_capacity_t_per_yr", p.pending_capacity_t_per_yr, 0.0)
    _per_agent(model, producers, "output_t", p.output_t, lowest)
    _per_agent(model, producers, "cash_usd_million", p.cash_usd_million, None)
    _per_agent(model, list(b.names), "need_t", b.need_t, 0.0)
    _per_agent(model, list(b.names), "cash_usd_million", b.cash_usd_million, None)
    if not np.isfinite(model.reserve.cash_usd_million):
        raise InvariantError(
            model.tick, "agent 'strategic_reserve'", "cash_usd_million",
            model.reserve.cash_usd_million, "not a finite number",
        )  # fmt: skip
    if not model.warming_up:
        _check_balances(model)


def _check_lots(model: RareEarthModel) -> None:
    """Lot attributes in [0, 1]; provenance and composition of held stock sum to 1."""
    w, s = model.world, model.world.stocks
    attrs = s.attrs  # per row × attribute
    finite = np.isfinite(attrs).all(axis=1)
    inside = ((attrs >= -SHARE_TOLERANCE) & (attrs <= 1 + SHARE_TOLERANCE)).all(axis=1)
    row = _first_bad(finite, finite & inside)
    if row is not None:
        column = int(
            np.flatnonzero(~np.isfinite(attrs[row]) | (attrs[row] < 0) | (attrs[row] > 1))[0]
        )
        raise InvariantError(
            model.tick,
            row_owner(model, row),
            f"lot attribute {column}",
            float(attrs[row, column]),
            "outside [0, 1]",
        )
    held = np.flatnonzero(s.qty_t > 0)
    for quantity, columns in (
        ("provenance shares", slice(0, w.layout.n_origin)),
        ("element composition", w.layout.composition),
    ):
        total = attrs[held, columns].sum(axis=1)  # per held row
        i = _first_bad(total, np.abs(total - 1.0) <= SHARE_TOLERANCE)
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
    if not abs(money) <= BALANCE_TOLERANCE * moved_usd:
        raise InvariantError(
            model.tick,
            "world",
            "money_balance_error_usd_million",
            money,
            f"the accounts do not sum to zero (of US$ {moved_usd:.6g} M moved)",
        )
