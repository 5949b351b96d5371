import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mtl.report.cli import report
from mtl.report.plots import pareto_front, point_labels
from mtl.report.runs import Group, epoch_series, find_runs
from mtl.report.tables import best_epochs


def make_run(
    root: Path,
    name: str,
    method: str,
    left: float | None,
    right: float = 0.0,
    log: str = "",
    single_task: str | None = None,
    config: dict | None = None,
    sam: str = "none",
    seed: int = 0,
) -> None:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"method": method, "sam": sam, "data": "multidigits"}}}}))
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": 0, **(config or {})}))
    if log:
        (run / "train.log").write_text(log)
    if left is None:
        return
    results = {
        "test": {"left": {"accuracy": left}, "right": {"accuracy": right}, "mean": {"accuracy": (left + right) / 2}},
        "higher_is_better": {"left": {"accuracy": True}, "right": {"accuracy": True}},
        "single_task": single_task,
        "seed": seed,
    }
    (run / "results.json").write_text(json.dumps(results))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    make_run(tmp_path, "0", "ew", 0.80, 0.90)
    make_run(tmp_path, "1", "ew", 0.84, 0.94)
    make_run(tmp_path, "2", "mgda", 0.90, 0.80)
    make_run(tmp_path, "3", "mgda", 0.90, 0.82)
    make_run(tmp_path, "4", "pcgrad", None, log="step 1\nRuntimeError: out of memory\n")
    return tmp_path


def test_report_averages_seeds_ranks_by_delta_m_and_lists_failed_runs(sweep, tmp_path):
    baselines = {"left": {"accuracy": 0.8}, "right": {"accuracy": 0.9}}
    text = report(sweep, ["method"], baselines, tmp_path / "report")
    lines = text.splitlines()
    # ew: left 0.82 ± 0.0283, right 0.92; Δm% = -((0.82-0.8)/0.8 + (0.92-0.9)/0.9)/2*100 = -2.3611
    # mgda: left 0.90, right 0.81 ± 0.0141; Δm% = -((0.1/0.8) + (-0.09/0.9))/2*100 = -1.25
    assert lines[2].startswith("| ew | 2 | 0.8200 ± 0.0283 | 0.9200 ± 0.0283 |") and "-2.36 | 1 |" in lines[2]
    assert lines[3].startswith("| mgda | 2 | 0.9000 ± 0.0000 | 0.8100 ± 0.0141 |") and "-1.25 | 2 |" in lines[3]
    assert "pcgrad" not in lines[3:4] and f"- `{sweep / '4'}`: RuntimeError: out of memory" in text
    assert (tmp_path / "report" / "report.csv").read_text().startswith("method,runs,left/accuracy")
    assert (tmp_path / "report" / "pareto.png").stat().st_size > 0 and (tmp_path / "report" / "pareto.pdf").is_file()


def test_without_baselines_the_rank_follows_the_mean_accuracy(sweep, tmp_path):
    text = report(sweep, ["method"], None, tmp_path / "report")
    assert [line.split(" | ")[0] for line in text.splitlines()[2:4]] == ["| ew", "| mgda"]  # 0.875 > 0.855


def test_pareto_front_respects_each_direction():
    points = [(0.9, 0.1), (0.5, 0.5), (0.4, 0.4), (0.1, 0.9)]
    assert pareto_front(points, (True, True)) == [0, 1, 3]
    assert pareto_front(points, (False, False)) == [0, 2, 3]



def test_points_are_labelled_by_method_and_coloured_by_the_last_group_key():
    groups = [Group(("ew", "none")), Group(("ew", "fmtl")), Group(("mgda", "none"))]
    assert point_labels(groups, ["method", "sam"]) == [("ew", "sam=none"), ("ew", "sam=fmtl"), ("mgda", "sam=none")]
    assert point_labels([Group(("ew",))], ["method"]) == [("ew", None)]


def test_versus_a_choice_gives_the_differences_paired_by_seed(tmp_path):
    sweep = tmp_path / "sweep"
    for seed, (none_left, fmtl_left) in enumerate([(0.80, 0.83), (0.90, 0.91)]):
        make_run(sweep, f"ew-none-{seed}", "ew", none_left, 0.5, sam="none", seed=seed)
        make_run(sweep, f"ew-fmtl-{seed}", "ew", fmtl_left, 0.5, sam="fmtl", seed=seed)
    make_run(sweep, "mgda-fmtl-0", "mgda", 0.7, 0.5, sam="fmtl")  # no mgda sam=none run: no row
    text = report(sweep, ["method", "sam"], None, tmp_path / "report", versus=("sam", "none"))
    differences = text.split("Differences from sam=none, paired by seed:")[1].strip().splitlines()
    # left: 0.83 - 0.80 = 0.03 and 0.91 - 0.90 = 0.01, mean 0.02, std 0.0141; right: 0 and 0
    assert differences[0].startswith("| method | sam | seeds | left/accuracy | right/accuracy |")
    assert differences[2].startswith("| ew | fmtl | 2 | 0.0200 ± 0.0141 | 0.0000 ± 0.0000 |")
    assert len(differences) == 3
    with pytest.raises(ValueError, match=r"no run has sam=sam; the runs have sam in \['fmtl', 'none'\]"):
        report(sweep, ["method", "sam"], None, tmp_path / "report", versus=("sam", "sam"))
    with pytest.raises(ValueError, match=r"'sam' is not one of the --group keys \['method'\]"):
        report(sweep, ["method"], None, tmp_path / "report", versus=("sam", "none"))


def test_an_empty_directory_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no runs"):
        report(tmp_path, ["method"], None, tmp_path / "out")



def test_a_sweep_whose_runs_all_failed_is_an_error_after_listing_them(tmp_path):
    make_run(tmp_path / "sweep", "0", "ew", None, log="ValueError: bad option\n")
    make_run(tmp_path / "sweep", "1", "mgda", None)
    with pytest.raises(RuntimeError, match="none of the 2 runs under .* finished"):
        report(tmp_path / "sweep", ["method"], None, tmp_path / "report")
    listed = (tmp_path / "report" / "report.md").read_text()
    assert "ValueError: bad option" in listed and "no results.json and no log" in listed
    cli = subprocess.run([sys.executable, "-m", "mtl.report", str(tmp_path / "sweep")], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and "mtl-report: none of the 2 runs" in cli.stderr

def add_single_task_runs(sweep: Path) -> None:
    """Single-task baselines: left 0.78 and 0.82 over two seeds, right 0.9; their other task's
    accuracy (0.1, untrained) must not count."""
    make_run(sweep, "stl-left-0", "stl", 0.78, 0.1, single_task="left")
    make_run(sweep, "stl-left-1", "stl", 0.82, 0.1, single_task="left")
    make_run(sweep, "stl-right-0", "stl", 0.1, 0.9, single_task="right")


def test_single_task_runs_are_the_baselines_and_are_not_ranked_as_methods(sweep, tmp_path):
    add_single_task_runs(sweep)
    text = report(sweep, ["method"], None, tmp_path / "report")
    lines = text.splitlines()
    # the same Δm% as against the baselines left 0.8, right 0.9 (the first test)
    assert lines[2].startswith("| ew | 2 |") and "-2.36 | 1 |" in lines[2]
    assert lines[3].startswith("| mgda | 2 |") and "-1.25 | 2 |" in lines[3]
    assert lines[4] == "" and "single-task runs (method=stl)" in lines[5]
    assert lines[7:11] == [
        "| single_task | runs | left/accuracy | right/accuracy |",
        "| --- | --- | --- | --- |",
        "| left | 2 | 0.8000 ± 0.0283 |  |",
        "| right | 1 |  | 0.9000 ± 0.0000 |",
    ]
    assert "stl" not in (tmp_path / "report" / "report.csv").read_text()


def test_given_baselines_take_precedence_over_single_task_runs(sweep, tmp_path):
    add_single_task_runs(sweep)
    text = report(sweep, ["method"], {"left": {"accuracy": 0.9}, "right": {"accuracy": 0.9}}, tmp_path / "report")
    # ew: -((0.82-0.9)/0.9 + (0.92-0.9)/0.9)/2*100 = 3.33
    assert "+3.33 | 1 |" in text.splitlines()[2] and "Δm% against the baselines from --baselines." in text


def test_single_task_runs_for_some_tasks_only_name_the_missing_ones(sweep, tmp_path):
    make_run(sweep, "stl-left-0", "stl", 0.8, 0.1, single_task="left")
    with pytest.raises(ValueError, match=r"cover \['left'\] but not \['right'\]; run method=stl method.task=<name>"):
        report(sweep, ["method"], None, tmp_path / "report")


def test_without_single_task_runs_the_baselines_of_the_config_are_used(tmp_path):
    configured = {"baselines": {"left": {"accuracy": 0.8}, "right": {"accuracy": 0.9}}}
    make_run(tmp_path / "sweep", "0", "ew", 0.80, 0.90, config=configured)
    make_run(tmp_path / "sweep", "1", "ew", 0.84, 0.94, config=configured)
    text = report(tmp_path / "sweep", ["method"], None, tmp_path / "report")
    assert "-2.36 | 1 |" in text.splitlines()[2] and "the `baselines` of the runs' config" in text


def test_runs_whose_configs_disagree_on_the_baselines_are_an_error(tmp_path):
    make_run(tmp_path / "sweep", "0", "ew", 0.80, 0.90, config={"baselines": {"left": {"accuracy": 0.8}}})
    make_run(tmp_path / "sweep", "1", "ew", 0.84, 0.94, config={"baselines": {"left": {"accuracy": 0.7}}})
    with pytest.raises(ValueError, match="the runs' configs give 2 different baselines"):
        report(tmp_path / "sweep", ["method"], None, tmp_path / "report")


def write_metrics_csv(run: Path, rows: list[dict]) -> None:
    (run / "csv").mkdir()
    header = ["epoch", "step", "train/mean/loss", "val/mean/accuracy", "val/mean/loss"]
    lines = [",".join(header)] + [",".join(str(row.get(column, "")) for column in header) for row in rows]
    (run / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_curves_read_each_epoch_from_the_csv_logs_and_are_plotted(sweep, tmp_path):
    # Lightning writes one row per logging call: step rows leave the epoch metrics empty.
    write_metrics_csv(
        sweep / "0", [{"epoch": 0, "step": 4}, {"epoch": 0, "step": 9, "val/mean/accuracy": 0.5}, {"epoch": 1, "step": 19, "val/mean/accuracy": 0.7, "train/mean/loss": 1.2}]
    )
    runs = {run.path.name: run for run in find_runs(sweep)}
    assert epoch_series(runs["0"], "val/mean/accuracy") == {0: 0.5, 1: 0.7}
    assert epoch_series(runs["0"], "train/mean/loss") == {1: 1.2}
    assert epoch_series(runs["2"], "val/mean/accuracy") == {}  # no log
    report(sweep, ["method"], None, tmp_path / "report")
    assert (tmp_path / "report" / "curves.png").stat().st_size > 0 and (tmp_path / "report" / "curves.pdf").is_file()


def test_no_curves_without_csv_logs(sweep, tmp_path):
    report(sweep, ["method"], None, tmp_path / "report")
    assert not (tmp_path / "report" / "curves.png").exists()


def test_the_summary_says_at_which_epoch_each_group_peaked_on_validation(sweep, tmp_path):
    for name, accuracies in (("0", [0.5, 0.8, 0.7, 0.6]), ("1", [0.5, 0.6, 0.9, 0.8])):
        write_metrics_csv(sweep / name, [{"epoch": epoch, "step": epoch, "val/mean/accuracy": value} for epoch, value in enumerate(accuracies)])
        results = json.loads((sweep / name / "results.json").read_text())
        (sweep / name / "results.json").write_text(json.dumps({**results, "epochs": 4}))
    lines = report(sweep, ["method"], None, tmp_path / "report").splitlines()
    columns = [column.strip() for column in lines[0].strip("|").split("|")]
    rows = {cells[0]: dict(zip(columns, cells)) for cells in ([cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:4])}
    # ew peaked at epochs 2 and 3 of 4 (counted from 1); mgda has no CSV log
    assert rows["ew"]["best val epoch"] == "2.5 (2–3) of 4" and rows["mgda"]["best val epoch"] == ""


def test_the_best_epoch_follows_the_metric_and_mode_of_the_runs_checkpoint(tmp_path):
    monitor = {"callbacks": {"model_checkpoint": {"monitor": "val/${oc.select:method.task,mean}/loss", "mode": "min"}}}
    make_run(tmp_path / "sweep", "0", "ew", 0.8, 0.9, config=monitor)
    rows = [{"epoch": epoch, "step": epoch, "val/mean/accuracy": accuracy, "val/mean/loss": loss} for epoch, (accuracy, loss) in enumerate([(0.9, 0.5), (0.5, 0.2), (0.6, 0.4)])]
    write_metrics_csv(tmp_path / "sweep" / "0", rows)
    (run,) = find_runs(tmp_path / "sweep")
    assert run.monitor == ("val/mean/loss", "min")
    assert best_epochs(Group(("ew",), [run])) == [2]  # the lowest loss, not the highest accuracy (epoch 1)


def test_the_last_epochs_stage_compares_the_mean_of_the_last_epochs_and_lists_runs_without_it(tmp_path):
    for name, (test, last) in {"0": (0.80, 0.70), "1": (0.84, 0.74)}.items():
        make_run(tmp_path / "sweep", name, "ew", test, 0.9)
        results_file = tmp_path / "sweep" / name / "results.json"
        results = json.loads(results_file.read_text())
        results["last_epochs"] = {"left": {"accuracy": last}, "right": {"accuracy": 0.9}}
        results_file.write_text(json.dumps(results))
    make_run(tmp_path / "sweep", "2", "mgda", 0.9, 0.9)  # trained without callbacks=last_epochs_mean
    text = report(tmp_path / "sweep", ["method"], None, tmp_path / "report", stage="last_epochs")
    assert text.splitlines()[2].startswith("| ew | 2 | 0.7200 ± 0.0283 | 0.9000 ± 0.0000 |")
    assert f"- `{tmp_path / 'sweep' / '2'}`: results.json has no 'last_epochs' (it needs callbacks=last_epochs_mean)" in text
    with pytest.raises(ValueError, match=r"unknown stage 'best'; valid choices: \['test', 'last_epochs'\]"):
        find_runs(tmp_path / "sweep", "best")
