"""Model and dataset cards rendered from structured run metadata (huggingface_hub's card tools).

A pretraining run directory holds everything a card needs: `model/config.json` (architecture, channels,
grid, normalisation, time scale), `model/training_data.json` (datasets with provenance), `run_args.json`
(hyperparameters, hardware), `metrics.json` (median relative L1 per channel group, dataset and lead time),
`result.json` (throughput, MFU) and an optional `predictions.png`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

from foundation.configuration_scot import PRESETS
from foundation.evaluation import HEADLINE, metric_key

if TYPE_CHECKING:  # only for the annotation: the data package is not needed to render a model card
    from foundation.data import TrajectorySource

# lead_time_table .. refiner_note are each empty or open with their own newline, so `{{-` strips the template's
# newline between them: one slot a line, yet the sections follow each other as if concatenated.
MODEL_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A scalable multiscale operator transformer (scOT, the architecture of Poseidon) that maps the state of a PDE
at time t to its state at t + lead time. {{ summary }}

## Architecture

| | |
|---|---|
| size | {{ size }} ({{ parameters }} parameters) |
| grid | {{ grid }} (patch {{ patch }}, window {{ window }}, depths {{ depths }}, embed {{ embed }}) |
| input channels | {{ inputs }} |
| output channels | {{ outputs }} |
| lead time | {{ lead_time }} |
| other grids | {{ resampling }} |

## Training data

{{ data_table }}

## Training procedure

{{ procedure }}

## Evaluation

Median over validation pairs of the per-sample relative L1 error (%), per channel group, then averaged over
groups (the Poseidon metric), on normalised fields (each channel scaled by the statistics the model carries).

{{ eval_table }}
{{ lead_time_table }}
{{- validation_curve }}
{{- validation_rollout }}
{{- held_out_evaluation }}
{{- horizon }}
{{- refiner_note }}
{{ plot }}
{{ benchmark }}
## How to use

```python
import torch
from foundation import ScOT

model = ScOT.from_pretrained("{{ repo_id }}")
fields = torch.randn(1, {{ n_in }}, {{ grid_h }}, {{ grid_w }})   # physical units, channels {{ inputs }}
prediction = model.predict(fields, lead_time={{ example_lead }})  # physical lead time
```

`model(pixel_values=..., time=...)` takes normalised inputs (`model.normalize`) and lead times in units of
`config.time_scale`.

## Limitations

{{ limitations }}

## Citation

```bibtex
@inproceedings{herde2024poseidon,
  title     = {Poseidon: Efficient Foundation Models for PDEs},
  author    = {Herde, Maximilian and Raoni{\\'c}, Bogdan and Rohner, Tobias and K{\\"a}ppeli, Roger and
               Molinaro, Roberto and de B{\\'e}zenac, Emmanuel and Mishra, Siddhartha},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2024}
}
```
"""

DATASET_TEMPLATE = """---
{{ card_data }}
---

# {{ pretty_name }}

{{ description }}

| | |
|---|---|
| PDE | {{ pde }} |
| trajectories | {{ n }} ({{ splits }}) |
| snapshots | {{ t }} at times {{ times }} (time scale {{ time_scale }}) |
| grid | {{ grid }} |
| channels | {{ channels }} |
| static fields | {{ statics }} |
| domain | {{ domain }} |

## Normalisation (training split)

{{ stats_table }}

## Provenance

```json
{{ provenance }}
```

## Layout

One HDF5 file: `fields` float32 [N, T, C, H, W] chunked per snapshot, `times` float64 [T], optional `static`
float32 [N, S, H, W]; metadata as JSON root attributes. Open it with
`foundation.data.open_source("<file>")`.
"""


_DEFAULT_LIMITATIONS = (
    "Trained on the datasets above only: other PDEs, boundary conditions, grids far from the training grid "
    "and lead times beyond 1.0 are extrapolation. Errors are medians over validation pairs; tails are worse. "
    "Channels a dataset lacks were masked, so the model's predictions for them on such inputs are untrained."
)

# Validation metrics are on normalised fields (foundation.evaluation names the space in every key).
_VALIDATION_MEDIAN = metric_key("median", 1, "normalised", "")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def collect_run(run_dir: str | Path, benchmark: str | Path | None = None) -> dict[str, Any]:
    """Everything a model card says, read from a pretraining (or fine-tuning) run directory.

    Args:
        run_dir: The run's output directory (it holds `model/config.json` once the run has finished).
        benchmark: A `python -m finetune.benchmark` output folder: the model's downstream benchmark, if given.

    Returns:
        The `meta` that `render_model_card` renders.

    Raises:
        FileNotFoundError: The run has no exported model, or `benchmark` is not a benchmark folder.
    """
    run = Path(run_dir)
    config = _read_json(run / "model" / "config.json")
    if config is None:
        raise FileNotFoundError(f"{run}/model/config.json: not a finished run (no exported model)")
    curve = run / "validation.jsonl"
    bench = None
    if benchmark is not None:
        folder = Path(benchmark)
        if not (folder / "benchmark.md").exists() or not (folder / "benchmark.json").exists():
            raise FileNotFoundError(f"{folder}: no benchmark.md / benchmark.json (a finetune.benchmark output)")
        bench = {"table": (folder / "benchmark.md").read_text(), **json.loads((folder / "benchmark.json").read_text())}
    return {
        "benchmark": bench,
        "validation_curve": [json.loads(line) for line in curve.read_text().splitlines()] if curve.exists() else [],
        "run_dir": str(run),
        "config": config,
        "datasets": _read_json(run / "model" / "training_data.json") or [],
        "args": _read_json(run / "run_args.json") or {},
        "metrics": _read_json(run / "metrics.json") or {},
        "result": _read_json(run / "result.json") or {},
        "plot": "predictions.png" if (run / "predictions.png").exists() else None,
        "evaluation": _read_json(run / "evaluation" / "evaluation.json"),
        "horizon": _read_json(run / "horizon" / "horizon.json"),  # python -m finetune.evaluate --horizon
        "refined": (run / "model" / "spectral_head.json").exists(),
        "parameters": _count_parameters(run / "model" / "model.safetensors"),
    }


def _count_parameters(path: Path) -> int | None:
    if not path.exists():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def _size_name(config: dict) -> str:
    """The preset whose width and depths the model has (the card's `scot-<size>` tag), or "custom"."""
    embed, depths = config.get("embed_dim"), config.get("depths")
    for name, preset in PRESETS.items():
        # Width and depths name the size; grid, patch and window may differ (a B fine-tuned at 64 x 64 is a B).
        if embed == preset["embed_dim"] and depths == preset["depths"]:
            return name
    return "custom"


def render_model_card(
    meta: dict[str, Any],
    repo_id: str,
    license: str = "apache-2.0",
    base_model: str | None = None,
    limitations: str | None = None,
) -> ModelCard:
    """A ModelCard (YAML front matter with model-index, then the sections) for the run in `meta`.

    Args:
        meta: What `collect_run` read from the run directory.
        repo_id: The Hub repository the card is for ("org/name"; the name titles the card).
        license: The license identifier of the front matter.
        base_model: The model this one was fine-tuned from (front matter and summary), if any.
        limitations: The Limitations section (default: what holds for any run of this toolkit).

    Returns:
        The card; `str(card)` is the README.md.
    """
    config, metrics, args, result = meta["config"], meta["metrics"], meta["args"], meta["result"]
    train = args.get("train", {})
    name = repo_id.split("/")[-1]
    size = _size_name(config)
    groups = _validation_groups(metrics)
    return ModelCard.from_template(
        _front_matter(meta, name, size, groups, license, base_model),
        template_str=MODEL_TEMPLATE,
        model_name=name,
        repo_id=repo_id,
        size=size,
        summary=(f"Fine-tuned from `{base_model}`." if base_model else "Pretrained with the pde-foundation toolkit."),
        parameters=f"{meta['parameters']:,}" if meta.get("parameters") else "?",
        **_architecture_slots(config),
        data_table=_training_data_table(meta["datasets"]),
        procedure=_procedure(args, result),
        eval_table=_validation_table(metrics, groups),
        lead_time_table=_lead_time_table(metrics),
        validation_curve=_validation_curve(meta.get("validation_curve") or [], train.get("batch_size")),
        validation_rollout=_rollout_table(metrics.get("rollout"), "validation trajectories, normalised fields"),
        held_out_evaluation=_evaluation_section(meta.get("evaluation"), result),
        horizon=_horizon_section(meta.get("horizon")),
        refiner_note=_refiner_note(repo_id) if meta.get("refined") else "",
        plot=f"\n![predictions against ground truth]({meta['plot']})\n" if meta.get("plot") else "",
        benchmark=_benchmark_section(meta.get("benchmark")),
        limitations=limitations or _DEFAULT_LIMITATIONS,
    )


def _front_matter(
    meta: dict[str, Any], name: str, size: str, groups: list[str], license: str, base_model: str | None
) -> ModelCardData:
    """The card's YAML metadata: license, lineage, tags, training datasets and the model-index results."""
    return ModelCardData(
        license=license,
        library_name="pde-foundation",
        model_name=name,
        base_model=base_model,
        tags=["pde", "neural-operator", "scot", "poseidon", "physics", f"scot-{size}"],
        datasets=_dataset_names(meta["datasets"]) or None,
        metrics=["median_relative_l1"],
        eval_results=_eval_results(meta["metrics"], groups) or None,
    )


def _validation_groups(metrics: dict) -> list[str]:
    """The channel groups the validation metrics name, in their order (the mean over groups left out)."""
    median = _VALIDATION_MEDIAN
    return [k[len(median) :] for k in metrics if k.startswith(median) and k != median + "mean"]


def _eval_results(metrics: dict, groups: list[str]) -> list[EvalResult]:
    """The model-index entries: one per dataset and channel group (and their mean), else the overall mean."""
    median = _VALIDATION_MEDIAN
    results = [
        EvalResult(
            task_type="time-series-forecasting",
            task_name="PDE operator learning",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split="validation",
            metric_type="median_relative_l1",
            metric_name=f"median relative L1 (%, normalised) {group}",
            metric_value=round(values[median + group], 3),
        )
        for dataset, values in (metrics.get("by_dataset") or {}).items()
        for group in groups + ["mean"]
        if median + group in values
    ]
    if not results and median + "mean" in metrics:  # a run validated without a per-dataset breakdown
        results.append(
            EvalResult(
                task_type="time-series-forecasting",
                dataset_type="validation",
                dataset_name="validation pairs",
                metric_type="median_relative_l1",
                metric_name="median relative L1 (%, normalised)",
                metric_value=round(metrics[median + "mean"], 3),
            )
        )
    return results


def _dataset_names(datasets: list[dict]) -> list[str]:
    """The front matter's datasets: each one's source as its provenance names it, else its file's stem."""
    return [d.get("provenance", {}).get("source") or Path(d["spec"].split(":")[-1]).stem for d in datasets]


def _architecture_slots(config: dict) -> dict[str, Any]:
    """The Architecture table and the How-to-use snippet: geometry, channels, lead time, other grids."""
    grid = config["image_size"] if isinstance(config["image_size"], list) else [config["image_size"]] * 2
    return dict(
        grid=f"{grid[0]} x {grid[1]}",
        grid_h=grid[0],
        grid_w=grid[1],
        patch=config["patch_size"],
        window=config["window_size"],
        depths=config["depths"],
        embed=config["embed_dim"],
        inputs=", ".join(config["channel_names"]),
        outputs=", ".join(config["output_channel_names"]),
        n_in=len(config["channel_names"]),
        lead_time=f"continuous; 1.0 = {config.get('time_scale', 1.0):g} time units (the span of a stored trajectory)",
        example_lead=config.get("time_scale", 1.0) / 2,
        resampling=(
            "Fourier-resampled to the model grid and back"
            if config.get("input_resampling") == "fourier"
            else "run natively (padding to patch and window multiples)"
        ),
    )


def _training_data_table(datasets: list[dict]) -> str:
    """The Training data table: one row per dataset, with where it came from."""
    rows = ["| dataset | PDE | channels | static | time scale | provenance |", "|---|---|---|---|---|---|"]
    for d in datasets:
        pde = d.get("pde", {}).get("id", "")
        prov = d.get("provenance", {})
        origin = prov.get("solver") or prov.get("layout") or prov.get("source") or ""
        seed = f", seed {prov['seed']}" if "seed" in prov else ""
        rows.append(
            f"| `{d['spec']}` | {pde} | {', '.join(d['channels'])} | {', '.join(d['static']) or '-'} "
            f"| {d['time_scale']:g} | {origin}{seed} |"
        )
    return "\n".join(rows)


def _procedure(args: dict, result: dict) -> str:
    """The Training procedure list: optimiser, schedule, data, hardware, throughput, and how it was fine-tuned."""
    train, data = args.get("train", {}), args.get("data", {})
    lines = [
        f"- optimiser AdamW, peak learning rate {train.get('learning_rate')}, weight decay "
        f"{train.get('weight_decay')}, {train.get('warmup_steps')} warm-up steps then cosine decay "
        f"(floor {train.get('min_lr_ratio')}), gradient clipping {train.get('max_grad_norm')}",
        f"- {train.get('max_steps')} steps, batch {train.get('batch_size')} per process x "
        f"{args.get('processes', 1)} process(es) x {train.get('gradient_accumulation_steps')} accumulation, "
        f"precision {train.get('precision')}, seed {train.get('seed')}",
        f"- all2all pairs: stride {data.get('stride')}, identity pairs "
        f"{data.get('include_identity')}; loss: relative L1 per channel group, channels a "
        f"dataset lacks masked out",
        f"- hardware: {args.get('distributed', '?')} on {args.get('device', '?')}, torch {args.get('torch', '?')}",
        f"- throughput: {result.get('samples_per_s_per_process', '?')} samples/s per process, MFU "
        f"{result.get('mfu', '?')} ({result.get('train_gflop_per_sample', '?')} GFLOP per sample, peak "
        f"{result.get('peak_tflops', '?')} TFLOP/s {result.get('peak_source', '')})",
    ]
    finetuning = args.get("finetune")
    if finetuning:  # a fine-tuning run (finetune.trainer): say how, since the numbers depend on it
        lines.append(_finetune_procedure(finetuning))
    return "\n".join(lines)


def _finetune_procedure(finetuning: dict) -> str:
    """The procedure line of a fine-tuning run: strategy, learning rates, and the strategy's own settings."""
    how = f"- fine-tuning strategy `{finetuning['strategy']}`"
    how += " (from scratch)" if finetuning.get("from_scratch") else ""
    how += f"; embedding/recovery lr {finetuning['head_learning_rate']}"
    how += f", time-conditioned norms lr {finetuning['norm_learning_rate']}"
    if finetuning["strategy"] == "lora":
        targets = ", ".join(finetuning["lora_targets"])
        how += f"; LoRA rank {finetuning['lora_rank']}, alpha {finetuning['lora_alpha']} on {targets}"
    if finetuning["strategy"] == "refiner":
        how += (
            f"; Spectral-Refiner on the {finetuning['refiner_loss']} H^-{finetuning['sobolev_s']} loss "
            f"(alpha {finetuning['sobolev_alpha']:.3g}), {finetuning['refiner_steps']} steps, "
            "early stopping on validation"
        )
    return how


def _validation_table(metrics: dict, groups: list[str]) -> str:
    """The Evaluation table: validation error per dataset (or over all pairs) and channel group."""
    median = _VALIDATION_MEDIAN
    rows = ["| dataset | " + " | ".join(groups) + " | mean |", "|---|" + "---|" * (len(groups) + 1)]
    for dataset, values in (metrics.get("by_dataset") or {"all": metrics}).items():
        cells = [f"{values[median + g]:.2f}" if median + g in values else "-" for g in groups]
        rows.append(f"| {dataset} | " + " | ".join(cells) + f" | {values.get(median + 'mean', 0):.2f} |")
    return "\n".join(rows)


def _lead_time_table(metrics: dict) -> str:
    """The validation error per lead time, averaged over channel groups."""
    leads = metrics.get("by_lead_time") or {}
    if not leads:
        return ""
    mean = _VALIDATION_MEDIAN + "mean"
    return (
        "\n| lead time | " + " | ".join(leads) + " |\n|---|" + "---|" * len(leads) + "\n| mean median "
        "rel. L1 (%) | " + " | ".join(f"{v[mean]:.2f}" for v in leads.values()) + " |\n"
    )


def _refiner_note(repo_id: str) -> str:
    """How to load a repository that holds a Spectral-Refiner head, and what its validation table measured."""
    return (
        "\n**Spectral-Refiner head.** This repository holds a spectral head beside the weights "
        f'(`spectral_head.safetensors`): load it with `finetune.load_model("{repo_id}")`. '
        "`ScOT.from_pretrained` refuses it (it would drop the head; `ignore_spectral_head=True` loads the scOT "
        "underneath on purpose), and the validation table above was measured "
        "before the refinement.\n"
    )


def _validation_curve(curve: list[dict], batch_size: int | None) -> str:
    """The validation error during training (validation.jsonl): where it stood when training stopped."""
    key = metric_key("median", 1, "normalised", "mean")
    points = [e for e in curve if key in e]
    if not points:
        return ""
    seen = f" ({batch_size} pairs per step per process)" if batch_size else ""
    return (
        f"\nValidation during training{seen}, mean median rel. L1 (%, normalised):\n\n| step | "
        + " | ".join(str(e["step"]) for e in points)
        + " |\n|---|"
        + "---|" * len(points)
        + "\n| error | "
        + " | ".join(f"{e[key]:.2f}" for e in points)
        + " |\n"
    )


def _benchmark_section(benchmark: dict | None) -> str:
    """The downstream benchmark (`finetune.benchmark`): this model fine-tuned vs scratch, FNO and persistence."""
    if not benchmark:
        return ""
    tasks = ", ".join(benchmark.get("tasks", {}))
    return (
        "\n## Does it transfer? Downstream benchmark\n\n"
        f"This model fully fine-tuned on PDEs it never saw ({tasks}) against the same architecture trained from "
        "scratch, neuraloperator's FNO and persistence, at an equal step budget, on held-out test trajectories "
        "(`python -m finetune.benchmark`). Ratios below 1 favour the fine-tuned model.\n\n" + benchmark["table"]
    )


def _rollout_table(rollout: dict | None, where: str) -> str:
    """Direct vs autoregressive errors per lead time (`foundation.evaluation.rollout`)."""
    if not rollout:
        return ""
    rows = [
        f"\nFrom the first snapshot, {where}: one direct call per lead time vs an autoregressive rollout (one call "
        "per snapshot interval, fed back).\n",
        "| lead time | " + " | ".join(rollout) + " |",
        "|---|" + "---|" * len(rollout),
    ]
    for kind in ("direct", "autoregressive"):
        rows.append(f"| {kind} (median rel. L1 %) | " + " | ".join(f"{v[kind]:.2f}" for v in rollout.values()) + " |")
    return "\n".join(rows) + "\n"


def _evaluation_section(evaluation: dict | None, result: dict) -> str:
    """Held-out results of a fine-tuning run (finetune.evaluate), with the refiner's before/after if any."""
    if not evaluation:
        return ""
    median = metric_key("median", 1, "physical", "")
    names = [k[len(median) :] for k in evaluation if k.startswith(median) and k != median + "mean"]
    rows = [
        f"\n### Held-out evaluation ({evaluation['split']} split, {evaluation['pairs']} pairs, physical units)\n",
        "| metric (%) | " + " | ".join(names) + " | mean |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for stat, p in (("median", 1), ("mean", 1), ("median", 2), ("mean", 2)):
        cells = [f"{evaluation.get(metric_key(stat, p, 'physical', n), float('nan')):.2f}" for n in names + ["mean"]]
        rows.append(f"| {stat} rel. L{p} | " + " | ".join(cells) + " |")
    before = (result.get("evaluation") or {}).get("before_refiner")
    if before:
        rows.append(
            f"\nSpectral-Refiner: median relative L1 {before.get(HEADLINE, float('nan')):.2f}% before "
            f"refinement, {evaluation.get(HEADLINE, float('nan')):.2f}% after."
        )
    rows.append(_rollout_table(evaluation.get("rollout"), "held-out trajectories, physical fields"))
    for plot in evaluation.get("plots", []):
        rows.append(f"\n![{plot[:-4]}](evaluation/{plot})")
    return "\n".join(rows) + "\n"


def _horizon_section(horizon: dict | None) -> str:
    """Rollouts past the training window (`foundation.evaluation.horizon`): windows, the last step, a few points."""
    if not horizon:
        return ""
    curve, leads, drift = horizon["median_rel_l1_physical/mean"], horizon["lead_time"], horizon["energy_drift"]
    picks = sorted({min(len(curve) - 1, round(i * (len(curve) - 1) / 5)) for i in range(6)})
    trained = horizon.get("trained_max_lead")
    rows = [
        f"\n### Past the training window ({horizon['trajectories']} held-out trajectories, physical units)\n",
        f"Rolled out from the first snapshot with the '{horizon['strategy']}' strategy (jumps of "
        f"{horizon['max_lead']:g} in model time units"
        + (f"; trained on lead times up to {trained:g}" if trained else "")
        + "). Energy drift: total energy of the prediction over the truth's, minus 1.\n",
        "| lead time | " + " | ".join(f"{leads[i]:.2f}" for i in picks) + " |",
        "|---|" + "---|" * len(picks),
        "| median rel. L1 (%) | " + " | ".join(f"{curve[i]:.2f}" for i in picks) + " |",
        "| energy drift | " + " | ".join(f"{drift[i]:+.3f}" for i in picks) + " |",
    ]
    held = horizon.get("persistence")
    if held:  # the first snapshot held: where the model errs more, it has no skill
        rows.insert(-1, "| persistence (%) | " + " | ".join(f"{held[i]:.2f}" for i in picks) + " |")
    windows = ", ".join(f"steps {k}: {v:.2f}%" for k, v in horizon.get("windows", {}).items())
    final = horizon["final"]
    last = final["median_rel_l1_physical/mean"]
    rows.append(
        f"\nLast step ({final['step']}, lead time {final['lead_time']:.2f}): {last:.2f}%"
        + (f"; The Well's windows, mean error: {windows}." if windows else ".")
    )
    restart = horizon.get("final_from_truth")
    if restart:  # how much of the last error is the model fed its own outputs
        own = restart["median_rel_l1_physical/mean"]
        rows.append(
            f"The same last call from the true state at step {restart['input_step']}: {own:.2f}%; the other "
            f"{max(last - own, 0.0):.2f} points are what feeding the model its own outputs cost."
        )
    return "\n".join(rows) + "\n"


def render_dataset_card(source: TrajectorySource, repo_id: str, license: str = "apache-2.0") -> DatasetCard:
    """A DatasetCard for a trajectory source (e.g. one written by `foundation.pdes`).

    Args:
        source: The opened dataset (`foundation.data.open_source`).
        repo_id: The Hub dataset repository the card is for ("org/name"; the name titles the card).
        license: The license identifier of the front matter.
    """
    info = source.info
    n, t, c, h, w = source.shape
    card_data = DatasetCardData(
        license=license,
        pretty_name=repo_id.split("/")[-1],
        tags=["pde", "physics", info.pde.get("id", "pde")],
        task_categories=["time-series-forecasting"],
        size_categories=["n<1K" if n < 1000 else "1K<n<10K"],
    )
    rows = ["| channel | mean | std |", "|---|---|---|"]
    for name, m, s in zip(info.channel_names, info.mean or [], info.std or []):
        rows.append(f"| {name} | {m:.6g} | {s:.6g} |")
    for name, m, s in zip(info.static_names, info.static_mean or [], info.static_std or []):
        rows.append(f"| {name} (static) | {m:.6g} | {s:.6g} |")
    times = [float(x) for x in info.times]
    return DatasetCard.from_template(
        card_data,
        template_str=DATASET_TEMPLATE,
        pretty_name=repo_id.split("/")[-1],
        description=(
            f"Trajectories of `{info.pde.get('id', 'a PDE')}` generated with the pde-foundation toolkit's "
            "built-in solvers."
            if "solver" in info.provenance
            else "PDE trajectories."
        ),
        pde=json.dumps(info.pde),
        n=n,
        splits=", ".join(f"{k} {v[0]}-{v[1]}" for k, v in info.splits.items()),
        t=t,
        times=f"{times[0]:g} ... {times[-1]:g}",
        time_scale=f"{info.time_scale:g}",
        grid=f"{h} x {w}",
        channels=", ".join(info.channel_names),
        statics=", ".join(info.static_names) or "-",
        domain=json.dumps(info.domain),
        stats_table="\n".join(rows),
        provenance=json.dumps(info.provenance, indent=2),
    )
