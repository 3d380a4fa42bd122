"""Market mechanics as pure array functions (MODEL.md §7.1–§7.2).

Nothing here knows about agents or the model: arrays in, arrays out, so each rule is tested on
its own. Edge arrays of one market are indexed by *local* seller and buyer positions.

- :func:`landed_cost` — what a kg costs a buyer through one edge, all-in.
- :func:`logit_shares` — how each buyer splits its orders over its eligible edges.
- :func:`clear` — order routing with proportional rationing and re-sending, for a few rounds.
- :func:`adjust_asks` — each seller's ask moves with its own excess demand.
- :func:`smooth` — exponential smoothing of expectations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from abm import threads
from abm.provenance import run_lengths, run_starts

TINY = 1e-12  # share of a market's size below which a quantity counts as nothing


def _tiny(*quantities: np.ndarray) -> float:
    """Quantity that counts as nothing in a market of these quantities (scale-free)."""
    return TINY * max(sum(float(np.abs(q).sum()) for q in quantities), 1e-300)


def landed_cost(
    ask: np.ndarray,
    duty: np.ndarray,
    tariff: np.ndarray,
    levy: np.ndarray,
    transport: np.ndarray,
    premium: np.ndarray,
) -> np.ndarray:
    """Landed cost per kg on each edge: ask·(1+duty)·(1+tariff) + levy + transport + premium.

    All arguments are per edge (US$/kg or ad valorem shares); returns US$/kg per edge. Terms
    that are zero on every edge are skipped (the same numbers, fewer passes over the edges).
    """
    cost = ask * (1.0 + duty) if duty.any() else ask
    cost = cost * (1.0 + tariff) if tariff.any() else cost
    cost = cost + levy if levy.any() else cost
    return cost + transport + premium


def _group_min(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    out = np.full(n_groups, np.inf)
    np.minimum.at(out, groups, values)
    return out


def logit_shares(
    cost: np.ndarray,
    buyer: np.ndarray,
    eligible: np.ndarray,
    n_buyers: int,
    beta: float,
    price_scale: np.ndarray,
) -> np.ndarray:
    """Multinomial-logit share of each buyer's orders on each of its edges.

    Args:
        cost: per edge, the cost the buyer ranks by (US$/kg; lower is better).
        buyer: per edge, local buyer index.
        eligible: per edge, whether the edge may receive orders now.
        n_buyers: number of buyers.
        beta: dimensionless price sensitivity; ``beta → ∞`` is cheapest-first (ties split).
        price_scale: per buyer, the reference price that makes ``beta`` dimensionless.

    Returns:
        Per edge share in [0, 1]; each buyer's shares sum to 1 over its eligible edges
        (0 everywhere for a buyer with none).

    """
    masked = np.where(eligible, cost, np.inf)  # per edge
    best = _group_min(masked, buyer, n_buyers)  # per buyer
    with np.errstate(invalid="ignore", over="ignore"):
        gap = (masked - best[buyer]) / price_scale[buyer]  # per edge, >= 0, inf or nan
        weight = np.where(eligible & np.isfinite(gap), np.exp(-beta * gap), 0.0)
    total = np.bincount(buyer, weight, minlength=n_buyers)  # per buyer
    safe = np.where(total > 0, total, 1.0)
    return weight / safe[buyer]


@dataclass
class Clearing:
    """Result of clearing one market."""

    flow: np.ndarray  # per edge: tonnes shipped
    orders: np.ndarray  # per seller: tonnes ordered, summed over rounds
    edge_orders: np.ndarray  # per edge: tonnes ordered, summed over rounds
    unmet: np.ndarray  # per buyer: tonnes wanted but not obtained
    unfilled: np.ndarray  # per edge: orders still unfilled in the last round that placed any


def clear(
    cost: np.ndarray,
    seller: np.ndarray,
    buyer: np.ndarray,
    eligible: np.ndarray,
    compliant: np.ndarray,
    demand: np.ndarray,
    min_compliant_share: np.ndarray,
    available: np.ndarray,
    beta: float,
    price_scale: np.ndarray | float,
    rounds: int,
    group: np.ndarray | None = None,
    group_cap: np.ndarray | None = None,
    buyer_starts: np.ndarray | None = None,
) -> Clearing:
    """Route orders by logit choice, ration oversubscribed sellers proportionally, re-send.

    A buyer with a compliance requirement ``m`` places the share ``m`` of its demand among
    compliant edges only and the rest among all its eligible edges. Each round, every seller
    fills all its orders in the same proportion ``min(1, available / orders)``; unfilled
    remainders are re-sent in the next round to sellers with stock left.

    Each round works only on the edges still in play — a buyer that has all it wanted and a
    seller sold out leave the market for good — taken as runs of edges per buyer (edges sorted
    by buyer, as the model stores them; other orders are sorted first). The result is the same
    as applying the rule to every edge (tested against a per-agent reference).

    Args:
        cost: per edge ranking cost (US$/kg).
        seller: per edge local seller index.
        buyer: per edge local buyer index.
        eligible: per edge, may trade at all (allowed by policy, below the reservation price).
        compliant: per edge, the seller's material counts as compliant.
        demand: per buyer, tonnes wanted.
        min_compliant_share: per buyer, share of demand that must be compliant.
        available: per seller, tonnes offered.
        beta: logit sensitivity.
        price_scale: per buyer reference price (or one for every buyer).
        rounds: number of order rounds (>= 1).
        group: per edge, export-control group or -1 (optional).
        group_cap: per group, tonnes that may still pass (updated in place); orders beyond it
            are rationed proportionally, like a seller's stock.
        buyer_starts: first edge of each buyer's run, if the caller knows them: the edges are
            then taken to be sorted by buyer. Computed otherwise.

    Returns:
        Flows per edge, orders per seller and unmet demand per buyer. Flows never exceed what a
        seller had available, nor what a buyer wanted. ``flow + unfilled`` counts each tonne a
        buyer asked for once, on the edge of its last attempt (orders re-sent are not counted
        again).

    """
    order = None
    if buyer_starts is None and len(buyer) > 1 and not bool(np.all(buyer[1:] >= buyer[:-1])):
        order = np.argsort(buyer, kind="stable")  # per edge, by buyer
        cost, seller, buyer = cost[order], seller[order], buyer[order]
        eligible, compliant = eligible[order], compliant[order]
        group = None if group is None else group[order]
        buyer_starts = None
    n_sellers, n_edges = len(available), len(cost)
    nothing = _tiny(available, demand)
    left = available.astype(float)  # per seller (a copy)
    want_compliant = demand * min_compliant_share  # per buyer
    want_any = demand - want_compliant  # per buyer
    any_compliant = bool(want_compliant.any())  # a compliant tranche in any round
    orders = np.zeros(n_sellers)  # per seller
    rationed = group is not None and group_cap is not None and len(group_cap) > 0
    constant_scale = np.ndim(price_scale) == 0 or (
        len(price_scale) > 0 and bool(np.all(price_scale == price_scale[0]))
    )
    finite = bool(np.isfinite(cost).all())
    play = _InPlay(seller, cost, compliant if any_compliant else None, group, buyer, buyer_starts)
    if not eligible.all():
        play.keep(eligible)
    placed_any = False  # some round placed orders: flows and orders accumulated in ``play``
    one_scale = float(np.ravel(price_scale)[0]) if constant_scale else 0.0
    # gaps to an infinite cost, and ratios of vanishing orders, are expected: not warned
    with np.errstate(invalid="ignore", over="ignore"):
        for _ in range(rounds):
            seller_in = left > nothing  # per seller: stock left
            buyer_in = (want_compliant + want_any)[play.buyer] > 0  # per live buyer: still wants
            every_seller = bool(seller_in.all())
            if not every_seller or not buyer_in.all():
                in_play = buyer_in.repeat(play.lengths)  # per live edge
                if not every_seller:
                    in_play &= seller_in[play.seller]
                if not in_play.any():  # every buyer served or every seller sold out
                    break  # nothing is re-sent
                if not in_play.all():
                    play.keep(in_play)
            s, starts, lengths = play.seller, play.starts, play.lengths
            scale = one_scale if constant_scale else price_scale[play.buyer].repeat(lengths)
            placed = []  # per tranche: tonnes ordered per live edge; None if no buyer wants any
            for want, restrict in ((want_compliant, play.compliant), (want_any, None)):
                if want is want_compliant and not any_compliant:
                    placed.append(None)
                    continue
                wanted = want[play.buyer]  # per live buyer
                if not wanted.any():
                    placed.append(None)
                    continue
                placed.append(
                    _run_logit(play.cost, restrict, starts, lengths, beta, scale, finite, wanted)
                )
            present = [tranche for tranche in placed if tranche is not None]
            edge_orders = (
                present[0] + present[1]
                if len(present) == 2
                else (present[0] if present else np.zeros(len(s)))
            )
            received = np.bincount(s, edge_orders, minlength=n_sellers)  # per seller
            if received.sum() <= nothing:
                break
            orders += received
            play.add_ordered(edge_orders)
            placed_any = True
            short = received > left  # per seller: oversubscribed
            edge_fill = None  # per live edge: share of orders filled (None: all of them)
            if short.any():
                # a vanishing order against a stock overflows the ratio: filled anyway
                fill = np.where(short, left / np.where(received > 0, received, 1.0), 1.0)
                edge_fill = fill[s]
            if rationed:
                edge_fill = np.ones(len(s)) if edge_fill is None else edge_fill
                edge_fill = _ration_groups(
                    edge_orders * edge_fill, edge_fill, play.group, group_cap
                )
            play.set_unfilled(None if edge_fill is None else edge_orders * (1.0 - edge_fill))
            for want, tranche in zip((want_compliant, want_any), placed, strict=True):
                if tranche is None:
                    continue
                got = tranche if edge_fill is None else tranche * edge_fill  # per live edge
                play.add_flow(got)
                want[play.buyer] -= np.add.reduceat(got, starts)  # per live buyer
                np.maximum(want, 0.0, out=want)
            sold = (
                received
                if edge_fill is None
                else np.bincount(s, edge_orders * edge_fill, minlength=n_sellers)
            )
            left -= sold
            np.maximum(left, 0.0, out=left)
    flow, ordered, unfilled = play.results(n_edges) if placed_any else np.zeros((3, n_edges))
    if order is not None:  # back to the caller's edge order
        flow, ordered, unfilled = (_unsort(x, order) for x in (flow, ordered, unfilled))
    return Clearing(
        flow=flow,
        orders=orders,
        edge_orders=ordered,
        unmet=want_compliant + want_any,
        unfilled=unfilled,
    )


class _InPlay:
    """The edges still in play in a clearing, as compacted copies that shrink round by round.

    Edges stay sorted by buyer and are held as runs, one per buyer (first edge and length), so
    a per-buyer value reaches its edges by ``np.repeat`` rather than by a gather. Flows and
    orders of the live edges accumulate here and are written out to every edge at the end (or
    when edges leave play), in the order of the rounds, so each sum is the one a per-edge
    accumulation would give.
    """

    def __init__(
        self,
        seller: np.ndarray,
        cost: np.ndarray,
        compliant: np.ndarray | None,
        group: np.ndarray | None,
        buyer: np.ndarray,
        starts: np.ndarray | None,
    ) -> None:
        self.at: np.ndarray | None = None  # per live edge: its position (None: every edge)
        self.seller, self.cost, self.compliant, self.group = seller, cost, compliant, group
        self.starts = run_starts(buyer) if starts is None else starts  # per live buyer
        self.buyer = buyer[self.starts]  # per live buyer: local buyer index
        self.lengths = run_lengths(self.starts, len(buyer))  # per live buyer: its edges
        self.flow: np.ndarray | None = None  # per live edge: tonnes filled so far
        self.ordered: np.ndarray | None = None  # per live edge: tonnes ordered so far
        self.unfilled: tuple[np.ndarray | slice, np.ndarray | None] | None = None  # last round
        self._flushed: list[tuple[np.ndarray | slice, np.ndarray, np.ndarray]] = []

    def keep(self, keep: np.ndarray) -> None:
        """Keep only the live edges where ``keep`` (per live edge) is true."""
        if self.flow is not None:  # edges leaving play take their totals with them
            self._flushed.append((self._where(), self.flow, self.ordered))
        kept = keep.nonzero()[0]  # per kept edge: its live position
        per_run = np.add.reduceat(keep, self.starts, dtype=np.intp) if len(keep) else keep
        runs = per_run > 0
        if runs.all():  # every buyer keeps an edge
            self.lengths = per_run
        else:
            self.lengths, self.buyer = per_run[runs], self.buyer[runs]
        self.starts = self.lengths.cumsum() - self.lengths
        if threads.n_threads(len(kept) * len(self._PER_EDGE)) > 1:
            self._gather_on_threads(kept)
            return
        self.at = kept if self.at is None else self.at[kept]
        self.seller, self.cost = self.seller[kept], self.cost[kept]
        self.compliant = None if self.compliant is None else self.compliant[kept]
        self.group = None if self.group is None else self.group[kept]
        if self.flow is not None:
            self.flow, self.ordered = self.flow[kept], self.ordered[kept]

    _PER_EDGE = ("at", "seller", "cost", "compliant", "group", "flow", "ordered")  # or None

    def _gather_on_threads(self, kept: np.ndarray) -> None:
        """:meth:`keep`'s gathers for a large market, in bands on the row threads."""
        names = [name for name in self._PER_EDGE if getattr(self, name) is not None]
        gathered = _gather([getattr(self, name) for name in names], kept)
        for name, values in zip(names, gathered, strict=True):
            setattr(self, name, values)
        if self.at is None:  # every edge was live until now
            self.at = kept

    def _where(self) -> np.ndarray | slice:
        return slice(None) if self.at is None else self.at

    def add_ordered(self, edge_orders: np.ndarray) -> None:
        if self.ordered is None:
            self.flow, self.ordered = np.zeros(len(self.seller)), np.zeros(len(self.seller))
        self.ordered += edge_orders

    def add_flow(self, got: np.ndarray) -> None:
        self.flow += got

    def set_unfilled(self, unfilled: np.ndarray | None) -> None:
        """Orders unfilled in this round (None: none), the last round's count."""
        self.unfilled = (self._where(), unfilled)

    def results(self, n_edges: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per edge: flow, orders summed over rounds, orders unfilled in the last round."""
        flow, ordered, unfilled = np.zeros((3, n_edges))
        for where, f, o in (*self._flushed, (self._where(), self.flow, self.ordered)):
            flow[where], ordered[where] = f, o
        where, last = self.unfilled
        if last is not None:
            unfilled[where] = last
        return flow, ordered, unfilled


def _gather(arrays: list[np.ndarray], at: np.ndarray) -> list[np.ndarray]:
    """``[a[at] for a in arrays]``, in bands of ``at`` on the row threads (the same values)."""
    out = [np.empty(len(at), a.dtype) for a in arrays]

    def work(part: slice) -> None:
        for a, o in zip(arrays, out, strict=True):
            # "clip" (the positions are in range) writes straight into ``o``; "raise" goes
            # through a temporary copy
            np.take(a, at[part], out=o[part], mode="clip")

    threads.run(work, threads.even(len(at), len(arrays)))
    return out


LOGIT_CHUNK = 1 << 17  # edges whose shares are worked out at a time (their arrays stay in cache)


def _run_logit(
    cost: np.ndarray,
    restrict: np.ndarray | None,
    starts: np.ndarray,
    lengths: np.ndarray,
    beta: float,
    scale: np.ndarray | float,
    finite: bool = False,
    wanted: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`logit_shares` for edges sorted by buyer, one run of edges per buyer.

    ``starts`` and ``lengths`` give each run's first edge and number of edges; ``restrict``
    (per edge; None: every edge) marks the edges that may receive orders; ``scale`` is the
    buyer's price scale per edge (or one for all); ``finite`` says every cost is a finite
    number, which spares the check for undefined weights; ``wanted`` (per run), if given,
    multiplies each run's shares: tonnes ordered per edge. Called under
    ``np.errstate(invalid="ignore", over="ignore")``: infinite gaps are expected.

    Runs are worked out a chunk of :data:`LOGIT_CHUNK` edges at a time, so the passes over a
    chunk find it in cache, and a large market's chunks are shared among threads
    (:func:`abm.threads.run_chunked`). Each run's shares depend on its own edges only: the
    result is the same bit for bit however the runs are cut.
    """
    n = len(cost)
    out = np.empty(n)
    if n == 0:
        return out
    if n <= LOGIT_CHUNK:  # one chunk: no bounds to work out
        _logit_into(out, cost, restrict, starts, lengths, beta, scale, finite, wanted)
        return out
    per_edge = np.ndim(scale) > 0
    bounds = np.append(starts, n)  # per run boundary: the edges before it

    def work(runs: slice) -> None:
        edges = slice(int(bounds[runs.start]), int(bounds[runs.stop]))
        with np.errstate(invalid="ignore", over="ignore"):  # a thread starts with numpy's default
            _logit_into(
                out[edges],
                cost[edges],
                None if restrict is None else restrict[edges],
                starts[runs] - edges.start,
                lengths[runs],
                beta,
                scale[edges] if per_edge else scale,
                finite,
                None if wanted is None else wanted[runs],
            )

    threads.run_chunked(work, bounds, LOGIT_CHUNK)
    return out


def _logit_into(
    out: np.ndarray,
    cost: np.ndarray,
    restrict: np.ndarray | None,
    starts: np.ndarray,
    lengths: np.ndarray,
    beta: float,
    scale: np.ndarray | float,
    finite: bool,
    wanted: np.ndarray | None,
) -> None:
    """:func:`_run_logit` on whole runs of edges, written into ``out``."""
    masked = cost if restrict is None else np.where(restrict, cost, np.inf)  # per edge
    best = np.minimum.reduceat(masked, starts)  # per run
    np.subtract(masked, best.repeat(lengths), out=out)  # per edge: gap to the best, >= 0, inf, nan
    out /= scale
    out *= -beta
    np.exp(out, out=out)  # an infinite gap weighs 0
    if restrict is not None or not finite:
        out[np.isnan(out)] = 0.0  # a buyer with nothing eligible, or an undefined cost
    total = np.add.reduceat(out, starts)  # per run
    out /= np.where(total > 0, total, 1.0).repeat(lengths)
    if wanted is not None:
        out *= wanted.repeat(lengths)


def _unsort(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Values computed in ``order`` put back in the original order."""
    out = np.empty_like(values)
    out[order] = values
    return out


def _ration_groups(
    passing: np.ndarray, edge_fill: np.ndarray, group: np.ndarray, group_cap: np.ndarray
) -> np.ndarray:
    """Scale fills so each group's passing tonnes stay within its cap (cap updated in place)."""
    grouped = group >= 0
    wanted = np.bincount(group[grouped], passing[grouped], minlength=len(group_cap))
    scale = np.where(wanted > group_cap, group_cap / np.where(wanted > 0, wanted, 1.0), 1.0)
    group_cap -= np.minimum(wanted, group_cap)
    return np.where(grouped, edge_fill * scale[np.maximum(group, 0)], edge_fill)


def adjust_asks(
    ask: np.ndarray,
    orders: np.ndarray,
    available: np.ndarray,
    kappa: float,
    floor: np.ndarray,
) -> np.ndarray:
    """Next ask of each seller: ``ask · exp(κ · clip((orders − available)/available, −1, 1))``.

    A seller with nothing to offer and no orders keeps its ask; one with nothing to offer but
    orders raises it by the full step. The result is bounded below by ``floor`` (per seller).
    """
    nothing = _tiny(orders, available)
    has_stock = available > nothing
    excess = np.where(
        has_stock,
        (orders - available) / np.where(has_stock, available, 1.0),
        np.where(orders > nothing, 1.0, 0.0),
    )
    return np.maximum(ask * np.exp(kappa * np.clip(excess, -1.0, 1.0)), floor)


def adjust_export_asks(
    export_ask: np.ndarray,
    ask: np.ndarray,
    export_orders: np.ndarray,
    export_sold: np.ndarray,
    kappa: float,
) -> np.ndarray:
    """Next export ask of each seller under export controls (quota rent, two-tier prices).

    Where controlled export orders exceed what passed the quota, the export ask rises like an
    ask facing excess demand; where they do not, it decays back towards the seller's own ask.
    It is never below that ask.
    """
    nothing = _tiny(export_orders)
    rationed = export_orders > export_sold + nothing
    excess = np.where(
        rationed, (export_orders - export_sold) / np.maximum(export_sold, nothing), 0.0
    )
    raised = export_ask * np.exp(kappa * np.clip(excess, 0.0, 1.0))
    relaxed = export_ask * np.exp(-kappa)
    return np.maximum(np.where(rationed, raised, relaxed), ask)


def smooth(expected: np.ndarray, observed: np.ndarray, weight: float) -> np.ndarray:
    """Exponential smoothing: ``(1 − weight)·expected + weight·observed``."""
    return (1.0 - weight) * expected + weight * observed
