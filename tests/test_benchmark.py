"""The transfer benchmark (`finetune.benchmark`) at tiny settings, and the pretraining corpus command: the table is
its cells (at twice the budget, converged or marked not), persistence is what it says, resuming skips what is done, a
corpus never holds a benchmark task."""

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
            eval_every=2,  # the validation curve (validation.jsonl): steps 2 and 3 (2, 4 and 6 at twice the budget)
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
            double_budget=False,
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
def test_benchmark_table_is_its_cells_at_twice_the_budget_persistence_is_exact_and_a_rerun_skips(base_dir, tmp_path):
    logs: list[str] = []
    args = arguments(base_dir, tmp_path)
    args[4].double_budget = True  # 3 steps to choose the rate, 6 reported
    args[4].converged_tolerance = 1e-3  # 3 -> 6 tiny steps move the errors by ~0.01-0.3 %: some are marked
    args[4].methods = ["finetuned", "scratch", "persistence"]  # FNO: in the rollout test (the time it takes)
    report = run_benchmark(*args, log=logs.append)
    assert list(report["tasks"]) == ["allen-cahn", "poisson-gauss"] and report["double_budget"] is True
    cells, unconverged = 0, []
    table = (tmp_path / "benchmark.md").read_text()
    for name, task in report["tasks"].items():
        assert set(task["methods"]) == {"finetuned", "scratch", "persistence"}
        for method in ("finetuned", "scratch"):
            warmup = 0 if method == "finetuned" else 1  # finetuned_warmup_steps 0; scratch (and FNO) --warmup_steps 1
            tests = {}
            for n in (2, 4):
                row = task["methods"][method][str(n)]
                for steps in (3, 6):  # both budgets coexist, each with its own schedule (warm-up x 2 at 6 steps)
                    folder = cell_folder(tmp_path, name, method, n, 0, row["learning_rate"], steps)
                    record = json.loads((folder / "cell.json").read_text())
                    budget = {"max_steps": steps, "batch_size": 3, "warmup_steps": warmup * steps // 3}
                    assert record["budget"] == budget
                    train = json.loads((folder / "run_args.json").read_text())["train"]
                    assert train["max_steps"] == steps and train["warmup_steps"] == budget["warmup_steps"]
                    assert train.get("select_best", True) is True  # the lowest-validation weights exported
                    tests[steps] = record["test"]
                    cells += 1
                # the row is the 6-step cell: its test error, its validation curve
                evaluation = json.loads((folder / "evaluation" / "evaluation.json").read_text())
                assert row["test"] == evaluation[HEADLINE] == tests[6] and row["test_by_seed"] == [tests[6]]
                assert row["test_at_budget"] == tests[3] and row["steps"] == 6
                change = (tests[6] - tests[3]) / tests[3]
                assert row["doubling_change"] == pytest.approx(change) and row["converged"] is (abs(change) < 1e-3)
                trained = json.loads((folder / "result.json").read_text())
                assert trained["step"] == 6 and trained["strategy"] == "full"
                assert trained["from_scratch"] is (method == "scratch")
                # a steady task's N = 2 trajectories are 2 pairs: its batch is all of them, not 3
                batch = json.loads((folder / "cell.json").read_text())["batch_size"]
                assert batch == (min(n, 3) if task["steady"] else 3)
                lines = (folder / "validation.jsonl").read_text().splitlines()
                curve = [[e["step"], e["median_rel_l1_normalised/mean"]] for e in map(json.loads, lines)]
                assert row["val_curve"] == curve and [step for step, _ in curve] == [2, 4, 6]
                # the table shows the 6-step error, marked where doubling the budget changed it by 5 % or more
                column = report["methods"].index(method)
                (line,) = [line for line in table.splitlines() if line.startswith(f"| {name} | {n} |")]
                shown = line.split(" | ")[2 + column]
                assert shown == f"{row['test']:.2f}" + ("" if row["converged"] else "*")
                if not row["converged"]:
                    unconverged.append((name, method, n))
        cells += 2  # persistence / training mean, per N
    assert unconverged  # 3 -> 6 steps moves some error by 0.1 % or more
    assert "\\* doubling the budget changed the test error by 0.1 % or more: not converged" in table
    allen_cahn = report["tasks"]["allen-cahn"]
    for n in (2, 4):  # persistence does not depend on N, and is exactly the hand computation
        row = allen_cahn["methods"]["persistence"][str(n)]
        assert row["test"] == pytest.approx(persistence_by_hand(allen_cahn["data"]), rel=1e-5)
        assert "converged" not in row and "doubling_change" not in row  # nothing trained, nothing doubled
    assert report["tasks"]["poisson-gauss"]["steady"] is True
    gains = allen_cahn["gains"]["scratch"]  # the gains are the 6-step errors'
    assert [g["finetuned"] for g in gains] == [allen_cahn["methods"]["finetuned"][str(n)]["test"] for n in (2, 4)]
    assert [g["baseline"] for g in gains] == [allen_cahn["methods"]["scratch"][str(n)]["test"] for n in (2, 4)]
    assert "| allen-cahn | 2 |" in table and "| poisson-gauss | 4 |" in table and "levelled off" not in table
    assert json.loads((tmp_path / "benchmark.json").read_text()) == json.loads(json.dumps(report))
    assert (tmp_path / "benchmark.png").stat().st_size > 1000

    # an interrupted or repeated benchmark skips every finished cell: nothing trains, nothing is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("cell.json")}
    assert len(stamps) == cells
    logs.clear()
    again = run_benchmark(*args, log=logs.append)
    assert again == report and sum("done before, skipped" in line for line in logs) == cells == len(logs)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("cell.json")} == stamps

    # a different budget is not mixed into the finished cells: another batch, or a 6-step scratch cell with the
    # warm-up of a 6-step budget (1) where the finished one had twice a 3-step budget's (2)
    for option, value, methods in (("batch_size", 2, None), ("max_steps", 6, ["scratch"])):
        args = arguments(base_dir, tmp_path)
        setattr(args[2], option, value)
        args[4].methods = methods or args[4].methods
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
    bench.n, bench.methods = [2], ["finetuned", "finetuned-rollout", "fno", "persistence"]
    report = run_benchmark(model_args, data_args, train_args, tune, bench, log=lambda line: None)
    rows = report["tasks"]["allen-cahn"]["methods"]
    assert rows["finetuned"]["2"]["horizon_final_step"] == 5 and rows["finetuned"]["2"]["horizon_final"] > 0
    assert "converged" not in rows["finetuned"]["2"] and rows["finetuned"]["2"]["steps"] == 3  # one budget only
    assert not list((tmp_path / "allen-cahn" / "finetuned").glob("*-steps6"))
    fno = cell_folder(tmp_path, "allen-cahn", "fno", 2, 0, 1e-3, 3)
    assert json.loads((fno / "result.json").read_text())["strategy"] == "fno" and rows["fno"]["2"]["horizon_final"] > 0
    assert json.loads((fno / "cell.json").read_text())["budget"]["warmup_steps"] == 1  # --warmup_steps
    fno = load_model(fno / "model")
    assert isinstance(fno, FNOBaseline) and fno.config.output_channel_names == ["u"]

    # the rollout-trained fine-tune beside it: trained with K = 2 sequences of the pair's lead, same budget
    def read(method: str, name: str) -> dict:
        return json.loads((cell_folder(tmp_path, "allen-cahn", method, 2, 0, 5e-4, 3) / name).read_text())

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
        families = [spec.split(":")[1] for _, spec in bench.task_list()]  # the control recipe names its one task
        assert len(families) >= (1 if "control" in recipe.stem else 4) and set(families) <= set(RESERVED)
        assert bench.n == [8, 32] and bench.seeds == [0, 1, 2]
        assert bench.search_seeds == 1 and bench.double_budget is True and bench.finetuned_warmup_steps == 0
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

    def fake_cell(root, task, method, spec, n, seed, lr, args, bench, log, factor=1):  # without training
        calls.append((method, n, seed, lr, factor))
        val = {1e-3: 2.0, 2e-3: 1.0}.get(lr, 3.0) + (seed or 0)
        curve = [[10 * k, val + 5 - k] for k in range(1, 6)]
        # twice the budget: seed 0 4 % lower, seed 1 10 % (the median moves 10 %: not converged), seed 2 unchanged
        return {"val": val, "test": 10 * val * (1 - {0: 0.04, 1: 0.1, 2: 0.0}[seed] * (factor - 1)), "val_curve": curve}

    monkeypatch.setattr(benchmark, "cell", fake_cell)
    model, data, train, tune, bench = arguments("unused", tmp_path)
    bench.tasks, bench.n, bench.methods = TASKS[:1], [2], ["scratch"]
    bench.seeds, bench.search_seeds, bench.scratch_learning_rates = [0, 1, 2], 1, [1e-3, 2e-3]
    bench.double_budget = True
    report = run_benchmark(model, data, train, tune, bench, log=lambda line: None)
    searched = [("scratch", 2, 0, 1e-3, 1), ("scratch", 2, 0, 2e-3, 1)]
    at_choice = [("scratch", 2, seed, 2e-3, factor) for factor in (1, 2) for seed in (0, 1, 2)][1:]
    assert calls == searched + at_choice  # the others at the choice, then every seed at twice the budget
    row = report["tasks"]["allen-cahn"]["methods"]["scratch"]["2"]
    assert row["learning_rate"] == 2e-3 and row["test_at_budget_by_seed"] == [10.0, 20.0, 30.0]
    assert row["test_by_seed"] == pytest.approx([9.6, 18.0, 30.0]) and row["test"] == pytest.approx(18.0)
    assert row["test_at_budget"] == 20.0 and row["doubling_change"] == pytest.approx(-0.1)
    assert row["converged"] is False and row["steps"] == 6
    assert row["val_by_learning_rate"] == {"0.001": 2.0, "0.002": 1.0}  # the searched seed only
    assert row["val_curve"] == [[10 * k, 2.0 + 5 - k] for k in range(1, 6)]  # median over the seeds, per step
    assert "18.00* [9.60-30.00]" in (tmp_path / "benchmark.md").read_text()

    bench.converged_tolerance = 0.15  # a 10 % change within the tolerance: converged, unmarked
    report = run_benchmark(model, data, train, tune, bench, log=lambda line: None)
    assert report["tasks"]["allen-cahn"]["methods"]["scratch"]["2"]["converged"] is True
    table = (tmp_path / "benchmark.md").read_text()
    assert "| 18.00 [9.60-30.00] |" in table and "not converged" not in table
