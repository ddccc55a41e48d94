"""Compare evaluation runs: a Markdown table plus PNG plots.

    python -m llm_unlearn.evaluation.report RUN_DIR [RUN_DIR ...] --out DIR

Each RUN_DIR holds summary.json (and per_sample.json, eval_steps.jsonl when present) written by
`run_evaluation` / `EvaluationCallback`, or has such folders below it (a training run's eval/). Writes DIR/report.md and:
* forget_quality_vs_utility.png: forget quality (log scale) against model utility, one point per run;
* forget_truth_ratio_hist.png: each run's per-sample forget truth ratios against its reference (retain) model's;
* eval_steps.png: metrics over training steps for runs with eval_steps.jsonl.
Plots are drawn with matplotlib's object API (Agg canvas), so no display or global backend is needed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from llm_unlearn.evaluation.logs import PER_SAMPLE_FILE, STEPS_FILE, SUMMARY_FILE, read_jsonl
from llm_unlearn.evaluation.metrics import summary_direction

# Main table columns, in this order when present in any run.
MAIN_COLUMNS = (
    "forget_quality",
    "model_utility",
    "forget_rougeL_recall",
    "retain_rougeL_recall",
    "forget_truth_ratio",
    "forget_prob",
    "retain_prob",
    "forget_extraction_strength",
    "forget_exact_memorization",
    "verbmem_f",
    "knowmem_f",
    "knowmem_r",
    "mia_min_k_auc",
    "privleak",
)
# Plotted over training steps: the main columns but the per-set extras.
STEP_COLUMNS = tuple(
    key
    for key in MAIN_COLUMNS
    if key not in ("retain_prob", "forget_extraction_strength", "forget_exact_memorization", "mia_min_k_auc")
)
SETTINGS = ("label_mode", "reference_log", "num_processes")


@dataclass
class Run:
    name: str
    path: Path
    summary: dict
    per_sample: dict | None
    steps: list[dict]

    @property
    def metrics(self) -> dict:
        return self.summary.get("metrics", {})

    @property
    def harness_keys(self) -> list[str]:
        """The headline metric keys of lm-evaluation-harness tasks (the lm_eval suite, or a run's `general`)."""
        return list(self.summary.get("lm_eval", {}).get("headline", {}))


def load_run(path: str | os.PathLike, name: str | None = None) -> Run:
    """One evaluation folder (holding summary.json)."""
    path = Path(path)
    summary_file = path / SUMMARY_FILE
    if not summary_file.is_file():
        raise FileNotFoundError(f"run folder {path} has no {SUMMARY_FILE}: evaluate it with run_evaluation first")
    summary = json.loads(summary_file.read_text())
    per_sample_file = path / PER_SAMPLE_FILE
    per_sample = json.loads(per_sample_file.read_text()) if per_sample_file.is_file() else None
    steps = read_jsonl(path / STEPS_FILE) if (path / STEPS_FILE).is_file() else []
    return Run(name or path.name, path, summary, per_sample, steps)


def find_runs(path: str | os.PathLike) -> list[Run]:
    """The folder itself when it holds summary.json, else every evaluation folder below it (e.g. run/eval)."""
    path = Path(path)
    if (path / SUMMARY_FILE).is_file():
        return [load_run(path)]
    runs = []
    for file in sorted(path.rglob(SUMMARY_FILE)):
        summary = json.loads(file.read_text())
        if isinstance(summary, dict) and "suite" in summary and "metrics" in summary:
            runs.append(load_run(file.parent, f"{path.name}/{file.parent.relative_to(path)}"))
    if not runs:
        raise FileNotFoundError(
            f"run folder {path} has no {SUMMARY_FILE} (nor any below it): evaluate it with run_evaluation first"
        )
    return runs


def _unique_names(runs: list[Run]) -> None:
    """Folder names label runs; repeat names get their parent folder prepended."""
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = f"{run.path.parent.name}/{run.path.name}"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _format(value) -> str:
    if value is None:
        return "–"
    if _is_number(value):
        return f"{value:.4g}"
    return str(value)


def _header(key: str, runs: list[Run] = ()) -> str:
    """The key with its direction's arrow: the metric registry's, else the one a run's summary records (harness
    tasks: lower is better on forget tasks)."""
    direction = summary_direction(key)
    for run in runs:
        direction = direction if direction is not None else run.summary.get("higher_is_better", {}).get(key)
    return key + {True: " ↑", False: " ↓", None: ""}[direction]


def _table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _reference_truth_ratios(run: Run) -> dict | None:
    location = run.summary.get("reference_log")
    if not location:
        return None
    candidates = [Path(location), run.path / location]
    for candidate in candidates:
        file = candidate / PER_SAMPLE_FILE if candidate.is_dir() else candidate
        if file.is_file():
            return json.loads(file.read_text()).get("forget", {}).get("truth_ratio")
    return None


def _plot_quality_vs_utility(runs: list[Run], out: Path) -> Path | None:
    points = [
        (r.name, r.metrics.get("model_utility"), r.metrics.get("forget_quality"))
        for r in runs
        if _is_number(r.metrics.get("model_utility")) and _is_number(r.metrics.get("forget_quality"))
    ]
    if not points:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    # A legend rather than labels next to the points: runs that barely moved sit on top of each other.
    markers = "osD^vP*X"
    for i, (name, utility, quality) in enumerate(points):
        ax.scatter([utility], [max(quality, 1e-300)], s=45, marker=markers[i % len(markers)], label=name, alpha=0.8)
    ax.legend(fontsize=8, loc="best")
    ax.set_yscale("log")
    ax.set_xlabel("model utility")
    ax.set_ylabel("forget quality (KS p-value, log scale)")
    ax.set_title("Forget quality vs model utility")
    ax.grid(True, which="both", alpha=0.3)
    path = out / "forget_quality_vs_utility.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _log10(values) -> list[float]:
    return [math.log10(v) for v in values if _is_number(v) and v > 0]


def _plot_truth_ratio_histograms(runs: list[Run], out: Path) -> Path | None:
    panels = [
        (r, list(r.per_sample["forget"]["truth_ratio"].values()))
        for r in runs
        if r.per_sample and r.per_sample.get("forget", {}).get("truth_ratio")
    ]
    if not panels:
        return None
    from matplotlib.figure import Figure

    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(4.5 * columns, 3.2 * rows))
    for number, (run, ratios) in enumerate(panels, start=1):
        ax = fig.add_subplot(rows, columns, number)
        ours = _log10(ratios)
        reference = _reference_truth_ratios(run)
        theirs = _log10(reference.values()) if reference else []
        low, high = min(ours + theirs), max(ours + theirs)
        bins = [low + (high - low) * i / 20 for i in range(21)] if high > low else 20
        ax.hist(ours, bins=bins, alpha=0.6, label=run.name)
        if theirs:
            ax.hist(theirs, bins=bins, alpha=0.6, label="retain model (reference)")
        ax.set_xlabel("log10 truth ratio (forget)")
        ax.set_ylabel("samples")
        ax.set_title(run.name, fontsize=9)
        ax.legend(fontsize=7)
    path = out / "forget_truth_ratio_hist.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _plot_steps(runs: list[Run], out: Path) -> Path | None:
    with_steps = [r for r in runs if r.steps]
    keys = [k for k in STEP_COLUMNS if any(_is_number(row.get(k)) for r in with_steps for row in r.steps)]
    if not keys:
        return None
    from matplotlib.figure import Figure

    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    fig = Figure(figsize=(4.5 * columns, 3.2 * rows))
    for number, key in enumerate(keys, start=1):
        ax = fig.add_subplot(rows, columns, number)
        for run in with_steps:
            points = [(row["step"], row[key]) for row in run.steps if _is_number(row.get(key))]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=run.name)
        if key == "forget_quality":
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_title(_header(key), fontsize=9)
        ax.legend(fontsize=7)
    path = out / "eval_steps.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def make_report(run_dirs: list[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Write out_dir/report.md (tables of every run's summary) and the PNG plots; return the report path."""
    if not run_dirs:
        raise ValueError("make_report needs at least one run folder")
    runs = [run for d in run_dirs for run in find_runs(d)]
    _unique_names(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    columns = [k for k in MAIN_COLUMNS if any(k in r.metrics for r in runs)]
    columns += list(dict.fromkeys(key for r in runs for key in r.harness_keys if key not in columns))
    lines = ["# Unlearning evaluation report", ""]
    lines += [
        "↑ higher is better, ↓ lower is better (on the forget set: more forgotten); no arrow: closer to the "
        "retain model (MIA AUC) or to 0 (privleak) is better; –: not computed (see the run's notes).",
        "",
    ]
    rows = [[r.name, r.summary.get("suite", "?")] + [_format(r.metrics.get(k)) for k in columns] for r in runs]
    lines += [_table(rows, ["run", "suite"] + [_header(k, runs) for k in columns]), ""]

    plots = [
        ("Forget quality vs model utility", _plot_quality_vs_utility(runs, out)),
        ("Forget truth ratios against the retain model", _plot_truth_ratio_histograms(runs, out)),
        ("Metrics over training steps", _plot_steps(runs, out)),
    ]
    for title, path in plots:
        if path is not None:
            lines += [f"## {title}", "", f"![{title}]({path.name})", ""]

    lines += ["## Runs", ""]
    for run in runs:
        lines += [f"### {run.name}", "", f"Folder: `{run.path}`", ""]
        settings = [f"{key}: `{run.summary.get(key)}`" for key in SETTINGS if key in run.summary]
        options = run.summary.get("options", {})
        settings += [
            f"{key}: `{options[key]}`"
            for key in ("truncate_rows", "rouge_stemming", "scale_100", "limit", "num_fewshot")
            if key in options
        ]
        lines += ["Settings: " + "; ".join(settings), ""]
        all_rows = [
            [key, _format(value), run.summary.get("null_reasons", {}).get(key, "")]
            for key, value in run.metrics.items()
        ]
        lines += [_table(all_rows, ["metric", "value", "why null"]), ""]
        for note in run.summary.get("notes", []):
            lines.append(f"* {note}")
        # A diverged model's NaN / inf rows: the metrics over them are null, and these are the rows to look at.
        for set_name, by_metric in run.summary.get("nonfinite_rows", {}).items():
            for metric, rows in by_metric.items():
                lines.append(f"* non-finite (NaN or inf) {metric} on '{set_name}' at rows {', '.join(rows)}")
        lines.append("")
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llm_unlearn.evaluation.report",
        description="Tabulate and plot evaluation runs (folders holding summary.json from run_evaluation).",
    )
    parser.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="evaluation output folders (or folders with them below)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="where report.md and the PNG plots go")
    args = parser.parse_args(argv)
    report = make_report(args.run_dirs, args.out)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
