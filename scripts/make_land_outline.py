"""Write abm/data/land_110m.json: coarse land outlines for the trade-flow map.

Source: Natural Earth 1:110m land (public domain), as TopoJSON in the npm package
``world-atlas`` (ISC licence, Mike Bostock). Run once, the output is committed::

    npm pack world-atlas@2.0.2 && tar xzf world-atlas-2.0.2.tgz
    .venv/bin/python scripts/make_land_outline.py package/land-110m.json

Rings are decoded from the topology, unwrapped across the antimeridian, rounded to 0.5
degrees, and stored as lists of [lon, lat]; rings of fewer than 4 distinct points after
rounding are dropped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "abm" / "data" / "land_110m.json"


def decode_arcs(topology: dict) -> list[np.ndarray]:
    scale = np.array(topology["transform"]["scale"])
    translate = np.array(topology["transform"]["translate"])
    return [
        np.cumsum(np.array(arc, dtype=float), axis=0) * scale + translate
        for arc in topology["arcs"]
    ]


def ring(indices: list[int], arcs: list[np.ndarray]) -> np.ndarray:
    parts = []
    for k, i in enumerate(indices):
        arc = arcs[i] if i >= 0 else arcs[~i][::-1]
        parts.append(arc if k == 0 else arc[1:])
    return np.concatenate(parts)


def main(path: str) -> None:
    topology = json.loads(Path(path).read_text())
    arcs = decode_arcs(topology)
    rings = []
    for geometry in topology["objects"]["land"]["geometries"]:
        polygons = geometry["arcs"] if geometry["type"] == "MultiPolygon" else [geometry["arcs"]]
        for polygon in polygons:
            outer = ring(polygon[0], arcs)  # holes are not drawn
            # rings crossing the antimeridian continue past ±180° instead of jumping back
            outer[:, 0] = np.rad2deg(np.unwrap(np.deg2rad(outer[:, 0])))
            outer = np.round(outer * 2) / 2
            keep = np.r_[True, np.any(np.diff(outer, axis=0) != 0, axis=1)]
            outer = outer[keep]
            if len(outer) >= 4:
                rings.append(outer.tolist())
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "source": "Natural Earth 1:110m land, public domain (via npm world-atlas 2.0.2)",
                "rings": rings,
            },
            separators=(",", ":"),
        )
    )
    print(f"{OUT}: {len(rings)} rings, {sum(map(len, rings))} points, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1])
