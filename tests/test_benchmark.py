"""The transfer benchmark (`finetune.benchmark`) at tiny settings, and the pretraining corpus command: the table is
its cells, persistence is what it says, resuming skips what is done, a corpus never holds a benchmark task."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT

from finetune import load_model
from finetune.baselines import FNOBaseline
from finetune.benchmark import BenchmarkArguments, run_benchmark
from finetune.cells import cell_folder
from finetune.config import FinetuneArguments
from foundation import ScOT
from foundation.data import open_source
from foundation.evaluation import HEADLINE
from foundation.pdes.corpus import RecipeError, build_corpus, load_recipe
from pretrain.config import DataArguments, ModelArguments, TrainArguments

TASKS = [
    "pde:allen-cahn:n=12,resolution=16,snapshots=4,seed=3,val=2,test=4,eps=0.08",
    "pde:poisson-gauss:n=12,resolution=16,seed=3,val=2,test=4",
]


def arguments(base_dir, out):
    return (
        ModelArguments(init_from=str(base_dir)),
        DataArguments(datasets=[], eval_pairs=8),
        TrainArguments(
            output_dir=str(out),
            max_steps=3,
            batch_size=3,
            warmup_steps=1,
            eval_every=2,  # the validation curve (validation.jsonl): steps 2 and 3
            save_every=0,
            tracker="none",
        ),
        FinetuneArguments(
            strategy="full", fno_modes=4, fno_width=8, fno_layers=2, eval_max_pairs=32, eval_rollout_trajectories=1
        ),
        BenchmarkArguments(
            tasks=TASKS,
            n=[2, 4],
            seeds=[0],
            finetuned_learning_rates=[5e-4],
            scratch_learning_rates=[1e-3],
            fno_learning_rates=[1e-3],
        ),
    )


def persistence_by_hand(path) -> float:
    """Median over all2all test pairs (i < j) of |u_i - u_j|_1 / |u_j|_1, in %, read straight from the file."""
    errors = []
    with open_source(path) as source:
        for traj in source.split("test"):
            states = [source.read(traj, k)[0].astype(np.float64) for k in range(source.num_snapshots)]
            for i in range(len(states)):
                for j in range(i + 1, len(states)):
                    errors.append(100 * np.abs(states[i] - states[j]).sum() / np.abs(states[j]).sum())
    return float(np.median(errors))


@pytest.mark.slow
def test_benchmark_table_is_its_cells_persistence_is_exact_and_a_rerun_skips(base_dir, tmp_path):
    logs: list[str] = []
    report = run_benchmark(*arguments(base_dir, tmp_path), log=logs.append)
    assert list(report["tasks"]) == ["allen-cahn", "poisson-gauss"]
    cells = 0
    for name, task in report["tasks"].items():
        assert set(task["methods"]) == {"finetuned", "scratch", "fno", "persistence"}
        for method in ("finetuned", "scratch", "fno"):
            for n in (2, 4):
                row = task["methods"][method][str(n)]
                folder = cell_folder(tmp_path, name, method, n, 0, row["learning_rate"])
                evaluation = json.loads((folder / "evaluation" / "evaluation.json").read_text())
                assert row["test"] == evaluation[HEADLINE] and row["test_by_seed"] == [evaluation[HEADLINE]]
                trained = json.loads((folder / "result.json").read_text())
                assert trained["step"] == 3 and trained["strategy"] == {"fno": "fno"}.get(method, "full")
                assert trained["from_scratch"] is (method == "scratch")
                # a steady task's N = 2 trajectories are 2 pairs: its batch is all of them, not 3
                batch = json.loads((folder / "cell.json").read_text())["batch_size"]
                assert batch == (min(n, 3) if task["steady"] else 3)
                lines = (folder / "validation.jsonl").read_text().splitlines()
                curve = [[e["step"], e["median_rel_l1_normalised/mean"]] for e in map(json.loads, lines)]
                assert row["val_curve"] == curve and [step for step, _ in curve] == [2, 3]
                cells += 1
        cells += 2  # persistence / training mean, per N
    allen_cahn = report["tasks"]["allen-cahn"]
    for n in (2, 4):  # persistence does not depend on N, and is exactly the hand computation
        assert allen_cahn["methods"]["persistence"][str(n)]["test"] == pytest.approx(
            persistence_by_hand(allen_cahn["data"]), rel=1e-5
        )
    assert report["tasks"]["poisson-gauss"]["steady"] is True
    flat = allen_cahn["scratch_levelled_off"]  # scratch's curve at the largest N: how much it still fell
    (_, first), (_, last) = allen_cahn["methods"]["scratch"]["4"]["val_curve"]
    assert flat["to_step"] == 3 and flat["improvement"] == pytest.approx(first / last - 1)
    fno = load_model(cell_folder(tmp_path, "allen-cahn", "fno", 2, 0, 1e-3) / "model")
    assert isinstance(fno, FNOBaseline) and fno.config.output_channel_names == ["u"]
    table = (tmp_path / "benchmark.md").read_text()
    assert "| allen-cahn | 2 |" in table and "| poisson-gauss | 4 |" in table
    assert json.loads((tmp_path / "benchmark.json").read_text()) == json.loads(json.dumps(report))
    assert (tmp_path / "benchmark.png").stat().st_size > 1000

    # an interrupted or repeated benchmark skips every finished cell: nothing trains, nothing is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("cell.json")}
    assert len(stamps) == cells
    logs.clear()
    again = run_benchmark(*arguments(base_dir, tmp_path), log=logs.append)
    assert again == report and sum("done before, skipped" in line for line in logs) == cells
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("cell.json")} == stamps

    # a different budget is not mixed into the finished cells
    args = arguments(base_dir, tmp_path)
    args[2].max_steps = 4
    with pytest.raises(ValueError, match="must keep its budget"):
        run_benchmark(*args, log=logs.append)

    # nor are cells fine-tuned from other pretrained weights (a resumed benchmark pointed at a retrained model)
    other = ScOT.from_pretrained(args[0].init_from)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    other.save_pretrained(tmp_path / "other-pretrained")
    args = arguments(base_dir, tmp_path)
    args[0].init_from = str(tmp_path / "other-pretrained")
    with pytest.raises(ValueError, match="other pretrained weights"):
        run_benchmark(*args, log=logs.append)


@pytest.mark.slow
def test_tasks_longer_than_the_window_get_rollout_rows(base_dir, tmp_path):
    # Trajectories of 6 snapshots, trained on the first 3: each cell also rolls out to the last snapshot.
    model_args, data_args, train_args, tune, bench = arguments(base_dir, tmp_path)
    data_args.max_snapshots, tune.eval_rollout_trajectories = 3, 2
    bench.tasks = ["pde:allen-cahn:n=10,resolution=16,snapshots=6,seed=3,val=2,test=2,eps=0.08"]
    bench.n, bench.methods = [2], ["finetuned", "finetuned-rollout", "persistence"]
    report = run_benchmark(model_args, data_args, train_args, tune, bench, log=lambda line: None)
    rows = report["tasks"]["allen-cahn"]["methods"]
    assert rows["finetuned"]["2"]["horizon_final_step"] == 5 and rows["finetuned"]["2"]["horizon_final"] > 0

    # the rollout-trained fine-tune beside it: trained with K = 2 sequences of the pair's lead, same budget
    def read(method: str, name: str) -> dict:
        return json.loads((cell_folder(tmp_path, "allen-cahn", method, 2, 0, 5e-4) / name).read_text())

    run_args = read("finetuned-rollout", "run_args.json")
    assert run_args["data"]["rollout_steps"] == 2 and run_args["data"]["rollout_lead_steps"] == 0
    assert read("finetuned", "run_args.json")["data"]["rollout_steps"] == 0
    assert read("finetuned-rollout", "cell.json")["budget"] == read("finetuned", "cell.json")["budget"]
    assert rows["finetuned-rollout"]["2"]["horizon_final"] > 0
    assert rows["finetuned-rollout"]["2"]["horizon_final"] != rows["finetuned"]["2"]["horizon_final"]
    errors = []  # persistence rolled out is the first snapshot, compared with the last
    with open_source(report["tasks"]["allen-cahn"]["data"]) as source:
        for traj in source.split("test"):
            first, last = (source.read(traj, k)[0].astype(np.float64) for k in (0, source.num_snapshots - 1))
            errors.append(100 * np.abs(first - last).sum() / np.abs(last).sum())
    assert rows["persistence"]["2"]["horizon_final"] == pytest.approx(np.median(errors), rel=1e-4)
    table = (tmp_path / "benchmark.md").read_text()
    assert "Past the training window" in table and "| allen-cahn | 2 | 5 |" in table


def test_corpus_generates_each_family_once_and_refuses_benchmark_tasks(tmp_path):
    recipe = tmp_path / "corpus.yaml"
    recipe.write_text(
        "resolution: 16\nsnapshots: 3\nseed: 5\nfamilies:\n  ns-sines: {n: 2}\n  ns-gauss: {n: 2, seed: 9}\n"
    )
    entries = load_recipe(recipe)
    assert [(e.family, e.seed) for e in entries] == [("ns-sines", 5), ("ns-gauss", 9)]
    logs: list[str] = []
    paths = build_corpus(entries, tmp_path / "corpus", log=logs.append)
    assert [p.name for p in paths] == ["ns-sines.h5", "ns-gauss.h5"]
    with open_source(paths[0]) as source:
        assert source.shape[:2] == (2, 3) and source.info.provenance["seed"] == 5
    manifest = json.loads((tmp_path / "corpus" / "corpus.json").read_text())
    assert manifest["families"]["ns-gauss"]["seed"] == 9 and manifest["families"]["ns-sines"]["n"] == 2

    os.remove(paths[1])  # as if interrupted during the second family
    stamp = paths[0].stat().st_mtime_ns
    logs.clear()
    build_corpus(entries, tmp_path / "corpus", log=logs.append)
    assert paths[0].stat().st_mtime_ns == stamp and paths[1].exists()
    assert "ns-sines: " in logs[0] and "already generated, skipped" in logs[0] and "2 trajectories" in logs[1]

    recipe.write_text("resolution: 16\nsnapshots: 3\nfamilies:\n  ns-sines: {n: 3}\n")  # other settings, same file
    with pytest.raises(RecipeError, match="ns-sines.h5 exists with .* delete it or choose another --out"):
        build_corpus(load_recipe(recipe), tmp_path / "corpus")
    assert paths[0].stat().st_mtime_ns == stamp  # never overwritten
    recipe.write_text("families:\n  ns-sines: {n: 2}\n  allen-cahn: {n: 2}\n")
    with pytest.raises(RecipeError, match="families.allen-cahn: reserved for the downstream benchmark"):
        load_recipe(recipe)
    recipe.write_text("families:\n  ns-sines: {n: 2, resolutoin: 8}\n")
    with pytest.raises(RecipeError, match=r"families.ns-sines: unknown keys \['resolutoin'\]"):
        load_recipe(recipe)


def test_benchmark_and_corpus_recipes_parse():
    from finetune.benchmark import check_benchmark
    from foundation.pdes.corpus import RESERVED
    from pretrain.config import parse_dataclasses

    classes = (ModelArguments, DataArguments, TrainArguments, FinetuneArguments, BenchmarkArguments)
    for recipe in sorted((REPO_ROOT / "launch" / "recipes").glob("benchmark*.yaml")):
        argv = ["--config", str(recipe), "--init_from", "some/model"]
        *_, bench, _ = parse_dataclasses(
            classes, argv, sections=("finetune", "benchmark"), check=check_benchmark, needs_datasets=False
        )
        names = [name for name, _ in bench.task_list()]
        assert len(names) >= 4 and set(names) <= set(RESERVED) and bench.n == [8, 32] and len(bench.seeds) == 2
    corpus = load_recipe(REPO_ROOT / "launch" / "recipes" / "corpus-cpu.yaml")
    assert {e.family for e in corpus} == {
        "ns-sines",
        "ns-gauss",
        "ns-pwc",
        "ns-sl",
        "ns-tracer-pwc",
        "ce-rp",
        "ce-kh",
        "ce-gauss",
    }


def test_the_learning_rate_is_searched_on_the_first_seeds_and_the_others_run_at_the_choice(tmp_path, monkeypatch):
    import finetune.benchmark as benchmark

    calls = []

    def fake_cell(root, task, method, spec, n, seed, lr, args, bench, log):  # the grid's outcome, without training
        calls.append((method, n, seed, lr))
        val = {1e-3: 2.0, 2e-3: 1.0}.get(lr, 3.0) + (seed or 0)
        curve = [[10 * k, val + 5 - k] for k in range(1, 6)]
        return {"val": val, "test": 10 * val, "val_curve": curve}

    monkeypatch.setattr(benchmark, "cell", fake_cell)
    model, data, train, tune, bench = arguments("unused", tmp_path)
    bench.tasks, bench.n, bench.methods = TASKS[:1], [2], ["scratch"]
    bench.seeds, bench.search_seeds, bench.scratch_learning_rates = [0, 1, 2], 1, [1e-3, 2e-3]
    report = run_benchmark(model, data, train, tune, bench, log=lambda line: None)
    assert calls == [("scratch", 2, 0, 1e-3), ("scratch", 2, 0, 2e-3), ("scratch", 2, 1, 2e-3), ("scratch", 2, 2, 2e-3)]
    row = report["tasks"]["allen-cahn"]["methods"]["scratch"]["2"]
    assert row["learning_rate"] == 2e-3 and row["test_by_seed"] == [10.0, 20.0, 30.0] and row["test"] == 20.0
    assert row["val_by_learning_rate"] == {"0.001": 2.0, "0.002": 1.0}  # the searched seed only
    assert row["val_curve"] == [[10 * k, 2.0 + 5 - k] for k in range(1, 6)]  # median over the seeds, per step
    flat = report["tasks"]["allen-cahn"]["scratch_levelled_off"]
    assert flat == {"from_step": 40, "to_step": 50, "improvement": pytest.approx(3.0 / 2.0 - 1)}
