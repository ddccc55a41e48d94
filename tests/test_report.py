"""make_report on fake run folders: Markdown table, PNG plots, and the command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_unlearn.evaluation.report import main, make_report

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(folder: Path, metrics: dict, ratios: dict, reference: Path | None = None, steps: list | None = None):
    folder.mkdir(parents=True)
    summary = {
        "suite": "tofu",
        "metrics": metrics,
        "null_reasons": {k: "no reference log" for k, v in metrics.items() if v is None},
        "notes": ["set 'holdout' not given: skipped (no MIA / privleak)"],
        "options": {"truncate_rows": None, "rouge_stemming": True},
        "label_mode": "answer_eot",
        "reference_log": str(reference) if reference else None,
        "num_processes": 1,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "per_sample.json").write_text(json.dumps({"forget": {"truth_ratio": ratios}}))
    if steps:
        (folder / "eval_steps.jsonl").write_text("".join(json.dumps(row) + "\n" for row in steps))


@pytest.fixture()
def runs(tmp_path):
    retain = tmp_path / "runs" / "retain"
    _write_run(
        retain,
        {"forget_quality": None, "model_utility": 0.61, "forget_rougeL_recall": 0.38, "retain_rougeL_recall": 0.8},
        {str(i): 0.5 + 0.05 * i for i in range(10)},
    )
    steps = [
        {"step": s, "epoch": s / 4, "suite": "tofu", "forget_quality": q, "forget_rougeL_recall": r}
        for s, q, r in [(0, 1e-5, 0.9), (2, 1e-3, 0.6), (4, 0.2, 0.4)]
    ]
    unlearned = tmp_path / "runs" / "mox"
    _write_run(
        unlearned,
        {"forget_quality": 0.0123, "model_utility": 0.58, "forget_rougeL_recall": 0.41, "privleak": -12.5},
        {str(i): 0.1 * (i + 1) for i in range(10)},
        reference=retain / "per_sample.json",
        steps=steps,
    )
    return retain, unlearned


def test_make_report_writes_table_and_plots(runs, tmp_path):
    out = tmp_path / "report"
    report = make_report(list(runs), out)
    text = report.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| run"))
    assert "forget_quality ↑" in header and "model_utility ↑" in header and "forget_rougeL_recall ↓" in header
    assert "privleak" in header
    mox_row = next(line for line in text.splitlines() if line.startswith("| mox |"))
    assert "| 0.0123 |" in mox_row and "| -12.5 |" in mox_row
    retain_row = next(line for line in text.splitlines() if line.startswith("| retain |"))
    assert "| – |" in retain_row  # null forget quality
    assert "no reference log" in text and "set 'holdout' not given" in text
    for name in ("forget_quality_vs_utility.png", "forget_truth_ratio_hist.png", "eval_steps.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        assert f"]({name})" in text


def test_report_without_optional_inputs_skips_those_plots(runs, tmp_path):
    retain, _ = runs
    out = tmp_path / "single"
    make_report([retain], out)
    assert not (out / "eval_steps.png").exists()
    assert not (out / "forget_quality_vs_utility.png").exists()  # its only run has no forget quality
    assert (out / "forget_truth_ratio_hist.png").is_file()
    with pytest.raises(FileNotFoundError, match="has no summary.json"):
        make_report([tmp_path / "runs" / "retain" / "nothing"], tmp_path / "x")


def test_folders_holding_evaluations_below_them_expand(runs, tmp_path):
    # tmp/runs holds retain/ and mox/: both are found, named after the given folder.
    report = make_report([tmp_path / "runs"], tmp_path / "nested").read_text()
    assert "| runs/mox |" in report and "| runs/retain |" in report


def test_command_line(runs, tmp_path, capsys):
    assert main([*map(str, runs), "--out", str(tmp_path / "cli")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli" / "report.md")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    helped = subprocess.run(
        [sys.executable, "-m", "llm_unlearn.evaluation.report", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert helped.returncode == 0 and "RUN_DIR" in helped.stdout and "--out" in helped.stdout
