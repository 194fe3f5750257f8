"""`python -m foundation.pdes list | generate ... | corpus ... | merge ...`: the built-in PDE data generators, and a
pretraining corpus from a recipe (`foundation.pdes.corpus`); under torchrun or accelerate launch (or with --rank and
--world_size) a request is split over the processes and joined into one file (`foundation.pdes.shards`)."""

from __future__ import annotations

import argparse
import ast
from collections.abc import Callable

from ..cli import guarded
from . import FAMILIES, generate


def _param(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    if not key or not value:
        raise argparse.ArgumentTypeError(f"--param expects KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _sharding(command: argparse.ArgumentParser) -> None:
    from .shards import distributed_rank

    rank, world, _ = distributed_rank()  # set by torchrun / accelerate launch / srun; flags for plain processes
    command.add_argument("--rank", type=int, default=rank, help="this process's rank (default: $RANK)")
    command.add_argument("--world_size", type=int, default=world, help="processes in all (default: $WORLD_SIZE)")
    command.add_argument("--no-merge", action="store_true", help="leave the shards (join them with `merge`)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m foundation.pdes", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the PDE families")
    gen = commands.add_parser("generate", help="simulate trajectories into an HDF5 file")
    gen.add_argument("--pde", required=True, help="family id (see `list`)")
    # --trajectories: under torchrun / accelerate launch, whose parsers read a bare --n as one of theirs (--nnodes...)
    gen.add_argument("--n", "--trajectories", dest="n", type=int, required=True, help="number of trajectories")
    gen.add_argument("--resolution", type=int, required=True, help="grid points per axis")
    gen.add_argument("--snapshots", type=int, default=None, help="stored snapshots (default 21; 1 if steady)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch", type=int, default=8, help="trajectories simulated together")
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--param", type=_param, action="append", default=[], help="PDE parameter KEY=VALUE")
    gen.add_argument("--out", required=True)
    gen.add_argument("--overwrite", action="store_true")
    gen.add_argument("--no-progress", action="store_true")
    _sharding(gen)
    merge = commands.add_parser("merge", help="join the shards of a generate request run over several processes")
    merge.add_argument("--out", required=True, help="the target file of the sharded request")
    merge.add_argument("--overwrite", action="store_true")
    corpus = commands.add_parser("corpus", help="generate a pretraining corpus from a recipe (resumable)")
    corpus.add_argument("--recipe", required=True, help="corpus recipe YAML (launch/recipes/corpus-*.yaml)")
    corpus.add_argument("--out", required=True, help="folder of the corpus: one HDF5 file per recipe entry")
    corpus.add_argument("--device", default="cpu")
    _sharding(corpus)
    return parser


def _list(args: argparse.Namespace) -> None:
    for fid, fam in sorted(FAMILIES.items()):
        kind = "steady" if fam.steady else f"t_end={fam.t_end}"
        print(
            f"{fid:16s} {','.join(fam.channel_names):14s} static={','.join(fam.static_names) or '-':6s} "
            f"{kind:10s} {fam.description}"
        )


def _generate(args: argparse.Namespace) -> None:
    request = dict(snapshots=args.snapshots, seed=args.seed, batch=args.batch, device=args.device)
    request.update(overwrite=args.overwrite, progress=not args.no_progress, **dict(args.param))
    if args.world_size > 1:
        from .shards import generate_sharded

        shard = dict(rank=args.rank, world_size=args.world_size, merge=not args.no_merge)
        path = generate_sharded(args.pde, args.n, args.resolution, args.out, **shard, **request)
    else:
        path = generate(args.pde, args.n, args.resolution, args.out, **request)
    print(path)


def _merge(args: argparse.Namespace) -> None:
    from .shards import merge_shards

    print(merge_shards(args.out, overwrite=args.overwrite))


def _corpus(args: argparse.Namespace) -> None:
    from .corpus import build_corpus, load_recipe

    paths = build_corpus(
        load_recipe(args.recipe), args.out, device=args.device, rank=args.rank, world_size=args.world_size
    )
    if args.rank == 0:
        print("\n".join(map(str, paths)))


_COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "list": _list,
    "generate": _generate,
    "merge": _merge,
    "corpus": _corpus,
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input (an impossible setting, an unknown family, a file in the way) ends in one
    `error: ...` line on stderr and exit code 2 (`foundation.cli.guarded`).

    Args:
        argv: The arguments (default: the command line).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command in ("generate", "corpus") and not 0 <= args.rank < args.world_size:
        parser.error(f"--rank {args.rank} is not in a world of --world_size {args.world_size}")
    return guarded(lambda: _COMMANDS[args.command](args))


if __name__ == "__main__":
    raise SystemExit(main())
