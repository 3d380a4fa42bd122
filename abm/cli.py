"""The ``abm`` command: ``abm run CONFIG [--seed N] [--ticks N] [--set k=v ...] [--out DIR]``.

Bad input (an invalid scenario, a malformed ``--set``) prints one line naming the key and value
and exits with status 2, before anything is written under the output folder.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from abm.scenario import ScenarioError, load_scenario


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
        help="override a scenario value (repeatable)",
    )
    run.add_argument("--out", default="runs", help="output folder (default runs/)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _run(args: argparse.Namespace) -> int:
    from abm.runs import run, write_failed_run

    scenario = load_scenario(args.config, args.overrides)
    if args.ticks is not None and args.ticks < 1:
        raise ScenarioError("--ticks", args.ticks, "must be at least 1")
    started = datetime.now(UTC)
    out = Path(args.out)
    try:
        result = run(scenario, seed=args.seed, ticks=args.ticks, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("abm: interrupted; nothing written", file=sys.stderr)
        return 130
    except Exception as err:  # the run itself failed: record it, then report
        folder = write_failed_run(scenario, args.seed, out, started, err, tick=-1)
        print(f"abm: run failed ({type(err).__name__}: {err}); see {folder}", file=sys.stderr)
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
    try:
        return _run(args)
    except ScenarioError as err:
        print(f"abm: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
