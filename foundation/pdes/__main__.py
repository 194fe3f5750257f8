"""`python -m foundation.pdes list | generate ... | corpus ...`: the built-in PDE data generators, and a pretraining
corpus from a recipe (`foundation.pdes.corpus`)."""

from __future__ import annotations

import argparse
import ast
import sys

from . import FAMILIES, UnstableSettings, generate


def _param(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    if not key or not value:
        raise argparse.ArgumentTypeError(f"--param expects KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m foundation.pdes", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the PDE families")
    gen = commands.add_parser("generate", help="simulate trajectories into an HDF5 file")
    gen.add_argument("--pde", required=True, help="family id (see `list`)")
    gen.add_argument("--n", type=int, required=True, help="number of trajectories")
    gen.add_argument("--resolution", type=int, required=True, help="grid points per axis")
    gen.add_argument("--snapshots", type=int, default=None, help="stored snapshots (default 21; 1 if steady)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch", type=int, default=8, help="trajectories simulated together")
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--param", type=_param, action="append", default=[], help="PDE parameter KEY=VALUE")
    gen.add_argument("--out", required=True)
    gen.add_argument("--overwrite", action="store_true")
    gen.add_argument("--no-progress", action="store_true")
    corpus = commands.add_parser("corpus", help="generate a pretraining corpus from a recipe (resumable)")
    corpus.add_argument("--recipe", required=True, help="corpus recipe YAML (launch/recipes/corpus-*.yaml)")
    corpus.add_argument("--out", required=True, help="folder of the corpus: one HDF5 file per family")
    corpus.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.command == "corpus":
        from .corpus import build_corpus, load_recipe

        try:
            paths = build_corpus(load_recipe(args.recipe), args.out, device=args.device)
        except (UnstableSettings, ValueError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print("\n".join(map(str, paths)))
        return 0
    if args.command == "list":
        for fid, fam in sorted(FAMILIES.items()):
            kind = "steady" if fam.steady else f"t_end={fam.t_end}"
            print(
                f"{fid:16s} {','.join(fam.channel_names):14s} static={','.join(fam.static_names) or '-':6s} "
                f"{kind:10s} {fam.description}"
            )
        return 0
    try:
        path = generate(
            args.pde,
            args.n,
            args.resolution,
            args.out,
            snapshots=args.snapshots,
            seed=args.seed,
            batch=args.batch,
            device=args.device,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            **dict(args.param),
        )
    except (UnstableSettings, ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
