"""A straightforward per-agent Python implementation of market clearing (MODEL.md §7.1).

It is the reference the vectorised ``abm.market.clear`` is tested against: loops over buyers
and sellers, dictionaries instead of arrays, the same rule written independently.
"""

from __future__ import annotations

import math

import numpy as np


def clear_reference(
    cost,
    seller,
    buyer,
    eligible,
    compliant,
    demand,
    min_compliant,
    available,
    beta,
    price_scale,
    rounds,
):
    n_edges = len(cost)
    price_scale = np.broadcast_to(np.asarray(price_scale, dtype=float), (len(demand),))
    left = [float(a) for a in available]
    want = [[d * m, d - d * m] for d, m in zip(demand, min_compliant, strict=True)]
    flow = [0.0] * n_edges
    orders_total = [0.0] * len(available)
    nothing = 1e-12 * max(sum(abs(a) for a in available) + sum(abs(d) for d in demand), 1e-300)
    edges_of = {}
    for e in range(n_edges):
        edges_of.setdefault(int(buyer[e]), []).append(e)
    for _ in range(rounds):
        placed = [[0.0, 0.0] for _ in range(n_edges)]
        for b, edges in edges_of.items():
            for tranche in (0, 1):
                usable = [
                    e
                    for e in edges
                    if eligible[e] and left[seller[e]] > nothing and (tranche == 1 or compliant[e])
                ]
                if not usable or want[b][tranche] <= 0:
                    continue
                best = min(cost[e] for e in usable)
                weights = {e: math.exp(-beta * (cost[e] - best) / price_scale[b]) for e in usable}
                total = sum(weights.values())
                for e in usable:
                    placed[e][tranche] = want[b][tranche] * weights[e] / total
        received = [0.0] * len(available)
        for e in range(n_edges):
            received[seller[e]] += placed[e][0] + placed[e][1]
        if sum(received) <= nothing:
            break
        fill = []
        for s in range(len(available)):
            orders_total[s] += received[s]
            fill.append(left[s] / received[s] if received[s] > left[s] else 1.0)
        for e in range(n_edges):
            for tranche in (0, 1):
                got = placed[e][tranche] * fill[seller[e]]
                flow[e] += got
                want[buyer[e]][tranche] = max(0.0, want[buyer[e]][tranche] - got)
                left[seller[e]] = max(0.0, left[seller[e]] - got)
    unmet = [w[0] + w[1] for w in want]
    return flow, orders_total, unmet
