"""Dataset specs of every run (pretraining, fine-tuning, evaluation): what `foundation.data.open_source` reads, plus
built-in generators.

    pde:wave-gauss:n=48,resolution=32,snapshots=11,seed=1[,val=8,test=32][,KEY=VALUE...]

simulates the family with `foundation.pdes.generate` once, into `<cache>/<family>-n48-r32-s11-seed1[-...].h5`
(extra KEY=VALUE pairs are PDE parameters), and is then an ordinary HDF5 source. `val` and `test` set the sizes
of the last two splits (the first n - val - test trajectories train); without them the split is 80/10/10. Under a
multi-process launch the first local process generates and the others wait for the file (it appears atomically,
complete).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

GENERATOR_PREFIX = "pde:"
_INTEGER_KEYS = ("n", "resolution", "snapshots", "seed", "batch", "val", "test")


def parse_generator_spec(spec: str) -> tuple[str, dict, dict]:
    """('wave-gauss', {n, resolution, snapshots, seed}, {PDE params}) of a `pde:` spec; ValueError naming it."""
    from foundation.pdes import FAMILIES

    body = spec[len(GENERATOR_PREFIX) :]
    family, _, options = body.partition(":")
    if family not in FAMILIES:
        raise ValueError(f"{spec}: unknown PDE family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    settings: dict = {"n": 32, "resolution": 32, "snapshots": None, "seed": 0}
    params: dict = {}
    for item in filter(None, options.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"{spec}: expected KEY=VALUE, got {item!r}")
        if key in _INTEGER_KEYS:
            try:
                settings[key] = int(value)
            except ValueError:
                raise ValueError(f"{spec}: {key} must be an integer, got {value!r}") from None
        else:
            try:
                params[key] = float(value)
            except ValueError:
                params[key] = value
    return family, settings, params


def resolve_specs(specs: list[str], cache: Path) -> list[str]:
    """The specs with every `pde:` generator replaced by the path of its (generated once) HDF5 file."""
    out = []
    for spec in specs:
        if not spec.startswith(GENERATOR_PREFIX):
            out.append(spec)
            continue
        family, settings, params = parse_generator_spec(spec)
        tag = f"{family}-n{settings['n']}-r{settings['resolution']}-s{settings['snapshots']}-seed{settings['seed']}"
        held_out = (settings.pop("val", None), settings.pop("test", None))
        if held_out != (None, None):
            val, test = held_out[0] or 0, held_out[1] or 0
            train = settings["n"] - val - test
            if train < 1 or val < 0 or test < 0:
                raise ValueError(f"{spec}: val={val} and test={test} leave {train} training trajectories of n")
            settings["splits"] = {
                "train": (0, train),
                "val": (train, train + val),
                "test": (train + val, settings["n"]),
            }
            tag += f"-val{val}-test{test}"
        tag += "".join(f"-{k}{v}" for k, v in sorted(params.items()))
        path = Path(cache) / f"{tag}.h5"
        if not path.exists():
            if int(os.environ.get("LOCAL_RANK", "0")) == 0:
                from foundation.pdes import generate

                path.parent.mkdir(parents=True, exist_ok=True)
                generate(family, out=path, progress=False, **settings, **params)
            else:
                deadline = time.monotonic() + 3600
                while not path.exists():
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{spec}: waited an hour for local rank 0 to write {path}")
                    time.sleep(1.0)
        out.append(str(path))
    return out
