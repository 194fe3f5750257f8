"""`python -m foundation.data inspect|check SPEC`: describe a source, or scan all of its data for NaN/Inf.

inspect: shape, channels, times, splits, stats and provenance of a source (metadata only).
check: reads every snapshot and static field of every trajectory (or of the chosen --split), prints each place
holding NaN/Inf (split, trajectory, snapshot, channel, counts) and a summary line; --json OUT writes the list.
Exit code 0 when clean, 2 when anything is bad or the source cannot be opened.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..cli import guarded
from . import open_source
from .check import report, scan, summary, table, write_report
from .source import SPLITS


def main(argv: list[str] | None = None) -> int:
    """Run `inspect` or `check`: exit code 0, or 2 when the scan finds NaN/Inf or the input is bad.

    Args:
        argv: The arguments (default: the command line).
    """
    parser = argparse.ArgumentParser(prog="python -m foundation.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="describe a source (see foundation.data.open_source)")
    check = commands.add_parser("check", help="scan every snapshot and static field for NaN/Inf")
    for command in (inspect, check):
        command.add_argument(
            "spec", help="file, 'LAYOUT:file' (CE-RP:CE-RP.nc, pdebench:FILE.hdf5), 'well:folder' or 'hub:org/name'"
        )
        command.add_argument("--layout", help="Poseidon layout name, scot, arrays, well, hub or pdebench")
    inspect.add_argument("--stats", action="store_true", help="compute missing statistics (reads the train split)")
    check.add_argument("--split", action="append", choices=SPLITS, help="only this split (repeatable; default: all)")
    check.add_argument("--json", metavar="OUT", help="also write the problems found to this JSON file")
    check.add_argument("--quiet", action="store_true", help="no progress bar (also off when stderr is not a TTY)")
    args = parser.parse_args(argv)

    def body() -> int:
        with open_source(args.spec, layout=args.layout, fill_stats=getattr(args, "stats", False)) as source:
            if args.command == "inspect":
                print(json.dumps(source.describe(), indent=2))
                return 0
            splits = list(dict.fromkeys(args.split)) if args.split else None
            problems = scan(source, splits, progress=not args.quiet and sys.stderr.isatty())
            print("\n".join([*table(problems), summary(source, problems, splits)]))
            if args.json:  # a --json path that cannot be written is bad input too (an OSError)
                write_report(args.json, report(source, problems, splits))
            return 2 if problems else 0

    return guarded(body)  # a source that cannot be opened or read (DataError): one line, exit 2


if __name__ == "__main__":
    raise SystemExit(main())
