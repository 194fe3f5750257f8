"""python -m model_cards render RUN_DIR --repo-id ORG/NAME [--out README.md]
python -m model_cards dataset-card FILE --repo-id ORG/NAME [--out README.md]
python -m model_cards publish RUN_DIR --repo-id ORG/NAME --release-dir DIR [--private] [--revision BRANCH]
                      [--message TEXT] [--base-model REPO] [--license ID] [--dry-run] [--overwrite]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from foundation.cli import guarded

from .publish import describe, plan_operations, prepare_release, publish
from .render import collect_run, render_dataset_card, render_model_card


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_cards", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser("render", help="print or write the model card of a run")
    render.add_argument("run_dir")
    render.add_argument("--repo-id", required=True)
    render.add_argument("--out")
    render.add_argument("--base-model")
    render.add_argument("--license", default="apache-2.0")
    render.add_argument("--benchmark", help="a finetune.benchmark output folder: its table goes in the card")
    dataset = commands.add_parser("dataset-card", help="the card of a dataset file")
    dataset.add_argument("spec")
    dataset.add_argument("--repo-id", required=True)
    dataset.add_argument("--out")
    pub = commands.add_parser("publish", help="write the release folder, then upload it (or --dry-run)")
    pub.add_argument("run_dir")
    pub.add_argument("--repo-id", required=True)
    pub.add_argument("--release-dir", required=True)
    pub.add_argument("--private", action="store_true")
    pub.add_argument("--revision", help="branch to upload to (created if missing; default main)")
    pub.add_argument("--message", help="commit message")
    pub.add_argument("--base-model")
    pub.add_argument("--license", default="apache-2.0")
    pub.add_argument("--benchmark", help="a finetune.benchmark output folder: its table goes in the card")
    pub.add_argument("--dry-run", action="store_true", help="stop after the folder and the planned operations")
    pub.add_argument("--overwrite", action="store_true", help="replace the local folder / remote revision")
    return parser


def _render(args: argparse.Namespace) -> None:
    card = render_model_card(
        collect_run(args.run_dir, args.benchmark),
        args.repo_id,
        license=args.license,
        base_model=args.base_model,
    )
    if args.out:
        card.save(args.out)
    else:
        print(card.content)


def _dataset_card(args: argparse.Namespace) -> None:
    from foundation.data import open_source  # the data package only for this command

    card = render_dataset_card(open_source(args.spec), args.repo_id)
    if args.out:
        card.save(args.out)
    else:
        print(card.content)


def _publish(args: argparse.Namespace) -> None:
    files = prepare_release(
        args.run_dir,
        args.release_dir,
        args.repo_id,
        overwrite=args.overwrite,
        license=args.license,
        base_model=args.base_model,
        benchmark=args.benchmark,
    )
    ops = plan_operations(
        Path(args.release_dir), args.repo_id, private=args.private, revision=args.revision, message=args.message
    )
    print(describe(files, ops))
    if not args.dry_run:
        print(publish(ops, overwrite=args.overwrite))


_COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "render": _render,
    "dataset-card": _dataset_card,
    "publish": _publish,
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input (no finished run, a release folder in the way, an unreadable file) ends in one
    `error: ...` line on stderr and exit code 2 (`foundation.cli.guarded`).

    Args:
        argv: The arguments (default: the command line).

    Returns:
        The exit code: 0, or 2 on bad input.
    """
    args = _parser().parse_args(argv)
    return guarded(lambda: _COMMANDS[args.command](args))


if __name__ == "__main__":
    raise SystemExit(main())
