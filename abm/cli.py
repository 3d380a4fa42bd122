"""The ``abm`` command: ``abm run CONFIG [--seed N] [--ticks N] [--set k=v ...] [--out DIR]``.

``abm sweep SWEEP.yaml [--workers N] [--address tcp://HOST:PORT] [--resume [DIR]] [--out DIR]``
runs a sweep file on Dask (:mod:`abm.sweeps`); ``abm analyze DIR`` writes a sweep's analysis.
``--set`` takes dotted scenario paths and the flat levers of :mod:`abm.levers`.

Bad input (an invalid scenario, a malformed ``--set``) prints one line naming the key and value
and exits with status 2, before anything is written under the output folder. A run that fails
leaves a run folder with ``status: failed`` and exits with status 1; Ctrl-C (or SIGTERM) stops
``abm run`` cleanly, writes nothing and exits with status 130.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from abm import threads
from abm.levers import resolve
from abm.scenario import ScenarioError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abm", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one scenario and write a run folder")
    run.add_argument("config", help="scenario YAML file")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument("--ticks", type=int, default=None, help="ticks to run (default: scenario)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a scenario value or a lever (repeatable)",
    )
    run.add_argument("--out", default="runs", help="output folder (default runs/)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _sweep_parsers(commands)
    return parser


def _sweep_parsers(commands: argparse._SubParsersAction) -> None:
    sweep = commands.add_parser("sweep", help="run a sweep file on a Dask cluster")
    sweep.add_argument("sweep", help="sweep YAML file (configs/sweeps/)")
    sweep.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local worker processes (default: CPUs; 0: no Dask)",
    )
    sweep.add_argument("--address", default=None, help="scheduler of an existing Dask cluster")
    sweep.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="DIR",
        help="finish an unfinished sweep (default: the newest of this sweep under --out)",
    )
    sweep.add_argument("--out", default="runs", help="output folder (default runs/)")
    sweep.add_argument("--batch-size", type=int, default=None, help="runs per Dask task")
    sweep.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    analyze = commands.add_parser("analyze", help="write a sweep's analysis tables and figures")
    analyze.add_argument("folder", help="a sweep folder written by abm sweep")


@contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Show warnings (e.g. outcomes left out of a Sobol table) as one line each."""
    with warnings.catch_warnings():
        # the embedded cluster has no dashboard: its HTTP port does not matter
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        warnings.showwarning = lambda message, *_, **__: print(
            f"abm: warning: {message}", file=sys.stderr
        )
        yield


def _sweep(args: argparse.Namespace) -> int:
    from abm.sweeps import SweepInterrupted, sweep

    if args.batch_size is not None and args.batch_size < 1:
        raise ScenarioError("--batch-size", args.batch_size, "must be at least 1")
    try:
        with _one_line_warnings():
            results = sweep(
                args.sweep,
                workers=args.workers,
                address=args.address,
                out=args.out,
                resume=args.resume,
                batch_size=args.batch_size,
                progress=not args.no_progress,
            )
    except SweepInterrupted as stop:
        print(
            f"abm: interrupted; {stop.done} of {stop.total} runs kept in {stop.path}; finish "
            f"with: abm sweep {args.sweep} --resume {stop.path}",
            file=sys.stderr,
        )
        return 130
    m = results.manifest
    session = m["sessions"][-1]
    print(
        f"{results.path}  ({m['status']}: {m['runs_ok']} ok, {m['runs_failed']} failed, "
        f"{m['runs_lost']} lost of {m['runs_total']}; {session['runs_per_minute']} runs/min)"
    )
    if m["status"] != "complete":
        print(f"abm: some runs were lost; retry them with --resume {results.path}", file=sys.stderr)
        return 1
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from abm.analysis import SweepResults, analyze

    try:
        results = SweepResults(args.folder)
    except FileNotFoundError:
        raise ScenarioError(
            "folder", args.folder, "not a sweep folder (no manifest.json)"
        ) from None
    if not results.complete:
        print(f"abm: {args.folder} is not complete; analysing the finished runs", file=sys.stderr)
    with _one_line_warnings():
        written = analyze(args.folder)
    for path in written:
        print(path)
    return 0


def _output_folder(text: str) -> Path:
    """The ``--out`` folder, created if needed; a ScenarioError if it cannot hold runs."""
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise ScenarioError("--out", text, "exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ScenarioError("--out", text, f"cannot create the folder ({err.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ScenarioError("--out", text, "the folder is not writable")
    return out


def _stop_on_sigterm() -> None:
    """Treat SIGTERM (a scheduler or ``kill``) like Ctrl-C: stop cleanly."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _run(args: argparse.Namespace) -> int:
    from abm.runs import RunFailed, RunInterrupted, run, write_failed_run

    _stop_on_sigterm()
    if args.ticks is not None and args.ticks < 1:
        raise ScenarioError("--ticks", args.ticks, "must be at least 1")
    if args.seed < 0:
        raise ScenarioError("--seed", args.seed, "must be 0 or more")
    scenario = resolve(args.config, args.overrides)
    out = _output_folder(args.out)
    started = datetime.now(UTC)
    try:
        result = run(scenario, seed=args.seed, ticks=args.ticks, progress=not args.no_progress)
    except RunInterrupted as stop:
        print(f"abm: {stop}; nothing written", file=sys.stderr)
        return 130
    except RunFailed as failed:  # the run itself failed: record it, then report
        folder = write_failed_run(
            scenario, args.seed, out, started, failed.error, failed.tick, failed.metrics, args.ticks
        )
        print(f"abm: {failed}; see {folder / 'manifest.json'}", file=sys.stderr)
        return 1
    folder = result.save(out, started)
    last = result.metrics.iloc[-1]
    print(
        f"{folder}  ({len(result.metrics) - 1} ticks, "
        f"{result.timings_s['simulation']:.2f} s simulation; "
        f"CN separation share {last.get('cn_share_separation', float('nan')):.0%})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``abm`` command."""
    args = _parser().parse_args(argv)
    command = {"run": _run, "sweep": _sweep, "analyze": _analyze}[args.command]
    try:
        threads.count()  # a bad ABM_THREADS is named before anything runs
    except ValueError as err:
        print(f"abm: error: {err}", file=sys.stderr)
        return 2
    try:
        return command(args)
    except ScenarioError as err:
        print(f"abm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before a run started, or while its folder was being written
        print("abm: interrupted; nothing written", file=sys.stderr)
        return 130
    except OSError as err:  # e.g. the disk filled up while the run folder was being written
        print(f"abm: error: could not write the output ({err})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
