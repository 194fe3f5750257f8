"""Cost of one optimizer step per fine-tuning strategy, measured in one process (ratios are what to compare).

    python benchmarks/finetune_cost.py [--preset T] [--resolution 128] [--batch 4] [--repeats 5]

For `full`, `head` and `lora` a step is forward + backward + AdamW on a batch; for `refiner` it is the head on
cached features (recovery + spectral head, forward + backward + Adam), plus the one-off cost of caching a
sample's features (one forward of the frozen body). Prints JSON: seconds per step (median), trainable parameters,
and each strategy's step time relative to `full`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from finetune.lora import lora_config, wrap
from finetune.refiner import RefinerHead, cache_features, relative_sobolev_loss
from finetune.strategies import parameter_roles
from foundation import ScOT, ScOTConfig


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: allocation, geometry caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="T")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.resolution
    config = ScOTConfig.from_preset(
        args.preset, image_size=n, channel_names=["u", "v"], output_channel_names=["u", "v"]
    )
    x, y, t = torch.randn(args.batch, 2, n, n), torch.randn(args.batch, 2, n, n), torch.rand(args.batch)
    out: dict = {"preset": args.preset, "resolution": n, "batch": args.batch, "threads": args.threads}

    def train_step(model):
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5)

        def step():
            loss = model(pixel_values=x, time=t, labels=y).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return step, sum(p.numel() for p in params)

    results = {}
    for strategy in ("full", "head", "lora"):
        model = ScOT(config).train()
        if strategy == "head":
            for p in model.parameters():
                p.requires_grad_(False)
            for p in parameter_roles(model)["head"]:
                p.requires_grad_(True)
        elif strategy == "lora":
            model = wrap(model, lora_config(8, 16, 0.0, ["query", "key", "value", "intermediate.dense"], True))
        step, trainable = train_step(model)
        results[strategy] = {"step_s": timed(step, args.repeats), "trainable_parameters": trainable}

    model = ScOT(config).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    items = [{"pixel_values": x[k], "time": t[k], "labels": y[k], "channel_mask": torch.ones(2)} for k in range(len(t))]
    cache_s = timed(lambda: cache_features(model, items, list(range(len(items))), batch_size=args.batch), args.repeats)
    cache = cache_features(model, items, list(range(len(items))), batch_size=args.batch)
    head = RefinerHead(model, (n, n))
    optimizer = torch.optim.Adam(head.param_groups(1e-3, 1e-2, True))
    rows = torch.arange(len(items))

    def refine_step():
        pred = head(cache.features, cache, rows)
        loss = relative_sobolev_loss(pred, cache.labels, cache.channel_mask, 1.0, 10**-1.5, (1.0, 1.0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    results["refiner"] = {
        "step_s": timed(refine_step, args.repeats),
        "cache_features_s_per_batch": cache_s,
        "trainable_parameters": sum(p.numel() for g in optimizer.param_groups for p in g["params"] if p.requires_grad),
    }
    full = results["full"]["step_s"]
    for row in results.values():
        row["step_relative_to_full"] = round(row["step_s"] / full, 4)
        row["step_s"] = round(row["step_s"], 4)
    results["refiner"]["cache_features_s_per_batch"] = round(cache_s, 4)
    out["strategies"] = results
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
