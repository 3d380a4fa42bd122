"""Performance suite of issue #4: ``python -m benchmarks`` (``make bench``).

- :mod:`benchmarks.synthetic` — synthetic firm-level worlds of any size.
- :mod:`benchmarks.cases` — the timed cases, each run in a fresh process.
- :mod:`benchmarks.sweeps` — sweep throughput (Dask workers, ``mesa.batch_run``).
- ``python -m benchmarks`` — runs them, prints the tables and targets, writes JSON.
"""
