"""`python -m foundation.data inspect SPEC`: shape, channels, times, splits, stats and provenance of a source."""

from __future__ import annotations

import argparse
import json
import sys

from . import DataError, open_source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m foundation.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="describe a source (see foundation.data.open_source)")
    inspect.add_argument("spec", help="file, 'LAYOUT:file' (e.g. CE-RP:CE-RP.nc), 'well:folder' or 'hub:org/name'")
    inspect.add_argument("--layout", help="Poseidon layout name, scot, arrays, well or hub")
    inspect.add_argument("--stats", action="store_true", help="compute missing statistics (reads the train split)")
    args = parser.parse_args(argv)
    try:
        with open_source(args.spec, layout=args.layout, fill_stats=args.stats) as source:
            print(json.dumps(source.describe(), indent=2))
    except (DataError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
