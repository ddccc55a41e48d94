"""Regenerate the tables and the plot of benchmarks/README.md from the committed result JSON.

    python benchmarks/make_tables.py [--results benchmarks/results] [--readme benchmarks/README.md] [--check]

Everything between `<!-- tables:begin -->` and `<!-- tables:end -->` in the README is rewritten; the rest
(how to rerun, the rule, the reading of the results) is left as it is. Per scale it writes
`<results>/<scale>/forget_quality_vs_utility.png`. `--check` writes nothing and exits 1 when the README is
out of date (for CI). Numbers are never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import selection
from run_benchmark import VALIDATION_VARIANT, table_rows
from run_benchmark import WEIGHTS as WEIGHTS_ORDER
from scales import TOFU_TABLE_METRICS

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"
SCALE_ORDER = ("protocol", "gpu", "cpu", "toy")


def load_results(results: Path) -> dict:
    """{scale: {"runs": {seed: {run: json}}, "selection": {seed: json}}} from <results>/<scale>/seed<N>/."""
    scales: dict = {}
    # cost/ and momentum_refresh/ are separate studies with their own files, not harness scales.
    not_scales = ("cost", "momentum_refresh")
    for scale_dir in sorted(p for p in results.iterdir() if p.is_dir() and p.name not in not_scales):
        runs, selection = {}, {}
        for seed_dir in sorted(scale_dir.glob("seed*")):
            files = sorted(seed_dir.glob("*.json"))
            if not files:  # a chunk still running its first run
                continue
            seed = int(seed_dir.name[len("seed") :])
            runs[seed] = {}
            for file in files:
                payload = json.loads(file.read_text())
                if file.name == "selection.json":
                    selection[seed] = payload
                else:
                    runs[seed][payload["run"]] = payload
        if runs:
            scales[scale_dir.name] = {"runs": runs, "selection": selection}
    return scales


def load_surgery(results: Path) -> dict | None:
    file = results / "surgery_vs_ga.json"
    return json.loads(file.read_text()) if file.is_file() else None


# benchmarks/surgery_vs_ga.py compares every method with this one; its row comes first.
SURGERY_REFERENCE = "ga"


def surgery_section(surgery: dict | None) -> list[str]:
    """benchmarks/surgery_vs_ga.py: change of forget / retain answer NLL after the same steps as GA."""
    if not surgery:
        return ["_No surgery-vs-GA results yet: run `python benchmarks/surgery_vs_ga.py`._", ""]
    start = surgery.get("start", {})
    data = surgery.get("data", {})
    lines = [
        f"SmolLM2-135M-Instruct + LoRA fine-tuned on {data.get('n_authors')} synthetic authors "
        f"({data.get('qa_per_author')} QA each, {data.get('forget_authors')} forgotten), then {surgery.get('steps')} "
        f"steps at lr {fmt_number(surgery.get('learning_rate'))} per method from the same target "
        f"(start: forget NLL {fmt_number(start.get('forget_nll'))}, retain NLL {fmt_number(start.get('retain_nll'))}).",
        "",
    ]
    rows = [
        [
            method,
            fmt_number(row.get("forget_nll_change")),
            fmt_number(row.get("retain_nll_change")),
            {True: "yes", False: "no", None: "–"}[row.get("forget_likelihood_lowered")],
            {True: "yes", False: "no", None: "–"}[row.get("retain_damage_below_ga")],
            fmt_number(row.get("train_seconds")),
        ]
        for method, row in sorted(surgery.get("results", {}).items(), key=lambda item: item[0] != SURGERY_REFERENCE)
    ]
    headers = [
        "method",
        "Δ forget NLL ↑",
        "Δ retain NLL ↓",
        "forget likelihood lowered",
        "retain damage < GA",
        "train s",
    ]
    return lines + table(headers, rows) + [""]


def load_cost(results: Path) -> dict | None:
    file = results / "cost" / "cost.json"
    return json.loads(file.read_text()) if file.is_file() else None


def load_exports(results: Path) -> dict | None:
    file = results / "cost" / "exports.json"
    return json.loads(file.read_text()) if file.is_file() else None


def fmt_mb(size: int) -> str:
    return f"{size / 1e6:.1f}"


def exports_section(exports: dict | None) -> list[str]:
    """benchmarks/export_cost.py: LoRA extrapolation at Llama-2-7B shapes, disk size of full-weight exports."""
    if not exports:
        return ["_No export results yet: run `python benchmarks/export_cost.py`._", ""]
    lora = exports["lora_llama2_7b"]
    lines = [f"{exports.get('description', '')} (α = {exports.get('alpha')}).", ""]
    rows = [
        [
            str(row["rank"]),
            f"{row['adapter_params'] / 1e6:.1f} M",
            fmt_number(row["scale_s"]),
            fmt_number(row["verify_s"]),
            fmt_number(row["extrapolate_and_verify_s"]),
            fmt_number(row["write_s"]),
            fmt_mb(row["adapter_bytes"]),
            fmt_number(row["previous_full_delta_check_32_layers_s_estimate"]),
        ]
        for row in lora["ranks"]
    ]
    header = ["LoRA r", "params", "B ← −αB s", "check s", "both s", "write s", "MB", "previous check s (est.)"]
    lines += table(header, rows)
    lines += [
        "",
        f"Llama-2-7B shapes ({lora['targets']}), random factors, no model. The previous check formed every full-size "
        "delta B·A; it is timed on one layer and multiplied by 32.",
        "",
    ]
    full = exports["full_weights_smollm2"]
    alphas = len(full["alphas"])
    rows = [
        ["one export, fp32, one file (previous)", fmt_mb(full["export_fp32_one_file_bytes"])],
        [
            f"one export, bf16, sharded ({len(full['export_bf16_shards'])} files of ≤ {full['export_bf16_max_shard_size']})",
            fmt_mb(full["export_bf16_sharded_bytes"]),
        ],
        [f"{alphas}-α run before: memorization/ + every α in fp32 (previous)", fmt_mb(full["run_eager_fp32_bytes"])],
        [
            f"{alphas}-α run now: memorization/ + unlearned/ + {alphas - 1} lazy α, export_dtype auto "
            f"(= {full['run_lazy_auto_dtype']} here)",
            fmt_mb(full["run_lazy_auto_bytes"]),
        ],
        ["the same, export_dtype bfloat16", fmt_mb(full["run_lazy_bf16_bytes"])],
    ]
    lines += table([f"full weights: {full['model']}", "MB on disk"], rows)
    lines += [
        "",
        f"A lazy α folder holds {full['lazy_folder_bytes']} bytes; materializing one took "
        f"{fmt_number(full['materialize_one_alpha_s'])} s.",
        "",
    ]
    env = exports.get("environment", {})
    lines += [
        f"Measured on: {env.get('device')} ({env.get('cpu_count')} CPUs, {env.get('torch_threads')} torch thread), "
        f"commit `{env.get('git_commit')}`.",
        "",
    ]
    return lines


def manifest_of(scale: dict) -> dict:
    """The scale as its selection.json records it (empty before any selection)."""
    return next(iter(scale["selection"].values()), {}).get("scale", {})


def table_metrics(scale: dict) -> tuple:
    """(metric key, column header) of the scale's tables: its manifest's (older files: TOFU's)."""
    return tuple(tuple(pair) for pair in manifest_of(scale).get("table_metrics", TOFU_TABLE_METRICS))


def fmt_number(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
            return f"{value:.2e}"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def fmt_lr(value) -> str:
    return "–" if value is None else f"{value:.0e}".replace("e-0", "e-")


def choice_order(key: str) -> tuple:
    """Choice keys are '<setting>/<weights>/<method or variant>'. Rows follow the method registry, each method
    followed by its family's variants (run_benchmark.table_rows); names it does not know come last."""
    _, weights, method = key.split("/")
    row_order, base = list(table_rows()), method.partition("+")[0]  # a MOX variant follows its base row
    rank = row_order.index(base) if base in row_order else len(row_order)
    return (WEIGHTS_ORDER.index(weights) if weights in WEIGHTS_ORDER else len(WEIGHTS_ORDER), rank, method)


def aggregate(values: list) -> str:
    """Mean (± sample std over seeds when there are several)."""
    numbers = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not numbers:
        return "–"
    if len(numbers) == 1:
        return fmt_number(float(numbers[0]))
    return f"{fmt_number(statistics.mean(numbers))} ± {fmt_number(statistics.stdev(numbers))}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def variant_label(variant: str) -> str:
    """A table row's label: the registry's, with a MOX variant's name in brackets (mox+kl4 -> MOX [kl4])."""
    base, _, change = variant.partition("+")
    label = table_rows().get(base, base)
    return f"{label} [{change}]" if change else label


def method_label(run: dict) -> str:
    return variant_label(run.get("variant") or run.get("method"))


def cost_ratios(cost: dict | None) -> dict:
    """{(method, weights): (step-time ratio, memory ratio)} from cost.json."""
    if not cost:
        return {}
    return {
        (row["method"], row["weights"]): (row.get("step_time_ratio"), row.get("peak_memory_ratio"))
        for row in cost.get("methods", [])
        if row.get("status", "ok") == "ok"
    }


def cost_key(run: dict) -> tuple[str, str]:
    # cost.json names rows like the results: a family variant by its variant name, other runs by their method.
    return run.get("variant") or run["method"], run.get("weights", "lora")


def selected_rows(scale: dict, setting: str, cost: dict | None) -> list[list[str]]:
    """One row per (weights, method) the selection chose, plus the target and retain references."""
    metrics = table_metrics(scale)
    seeds = sorted(scale["runs"])
    ratios = cost_ratios(cost)
    rows = []
    for which in ("target", "retain"):
        runs = [scale["runs"][s].get(f"{setting}-{which}") for s in seeds]
        runs = [r for r in runs if r]
        if runs:
            label = "target (before unlearning)" if which == "target" else "retain model (oracle)"
            rows.append(
                [label, "–", "–", "–"]
                + [aggregate([r["metrics"].get(k) for r in runs]) for k, _ in metrics]
                + ["–", "–", "–"]
            )
    keys = []
    for seed in seeds:
        choices = scale["selection"].get(seed, {}).get("settings", {}).get(setting, {}).get("choices", {})
        keys += [k for k in choices if k not in keys]
    for key in sorted(keys, key=choice_order):
        if key.endswith(f"+{VALIDATION_VARIANT}"):  # its forget quality counts test rows only: its own table
            continue
        chosen = []
        for seed in seeds:
            choice = scale["selection"].get(seed, {}).get("settings", {}).get(setting, {}).get("choices", {}).get(key)
            if choice and choice["run"] in scale["runs"][seed]:
                chosen.append((scale["runs"][seed][choice["run"]], choice))
        if not chosen:
            continue
        first = chosen[0][0]
        lrs = sorted({fmt_lr(r.get("learning_rate")) for r, _ in chosen})
        alphas = sorted({fmt_number(r.get("alpha")) for r, _ in chosen if r.get("alpha") is not None})
        met = all(c.get("met_rule") for _, c in chosen)
        step_ratio, memory_ratio = ratios.get(cost_key(first), (None, None))
        failed = any(r.get("status") == "failed" for r, _ in chosen)
        label = method_label(first) + (" (failed)" if failed else "") + ("" if met else " †")
        rows.append(
            [label, first.get("weights", "–"), ", ".join(lrs), ", ".join(alphas) or "–"]
            + [aggregate([r["metrics"].get(k) for r, _ in chosen]) for k, _ in metrics]
            + [fmt_number(step_ratio), fmt_number(memory_ratio), str(len(chosen))]
        )
    return rows


HEADLINE_PAIRS = (("mox", "ga"), ("mox", "npo"), ("mox", "task_vector"))


def chosen_run(scale: dict, seed, key: str) -> dict | None:
    choice = scale["selection"].get(seed, {}).get("settings", {}).get(key.split("/")[0], {}).get("choices", {}).get(key)
    return scale["runs"][seed].get(choice["run"]) if choice else None


def headline_rows(scale: dict, setting: str) -> list[list[str]]:
    """Per seed, forget quality of MOX's selected run minus the other method's (same weights where the other
    ran them, else its LoRA run), and on how many seeds MOX is ahead: the spread a mean hides."""
    seeds = sorted(scale["runs"])
    rows = []
    for mox_weights in WEIGHTS_ORDER:
        for ours, theirs in HEADLINE_PAIRS:
            differences, utilities = [], []
            for seed in seeds:
                mine = chosen_run(scale, seed, f"{setting}/{mox_weights}/{ours}")
                other = chosen_run(scale, seed, f"{setting}/{mox_weights}/{theirs}") or chosen_run(
                    scale, seed, f"{setting}/lora/{theirs}"
                )
                fq = [r["metrics"].get("forget_quality") if r else None for r in (mine, other)]
                mu = [r["metrics"].get("model_utility") if r else None for r in (mine, other)]
                differences.append(fq[0] - fq[1] if None not in fq else None)
                utilities.append(mu[0] - mu[1] if None not in mu else None)
            known = [d for d in differences if d is not None]
            if not known:
                continue
            other_weights = (
                mox_weights if any(chosen_run(scale, s, f"{setting}/{mox_weights}/{theirs}") for s in seeds) else "lora"
            )
            ahead = sum(d > 0 for d in known)
            behind = sum(d < 0 for d in known)
            rows.append(
                [f"MOX ({mox_weights}) − {table_rows().get(theirs, theirs)} ({other_weights})"]
                + [fmt_number(d) for d in differences]
                + [f"{ahead} ahead, {behind} behind, {len(known) - ahead - behind} tied", aggregate(utilities)]
            )
    return rows


VALIDATION_MOX = HEADLINE_PAIRS[0][0]  # the MOX method whose α the validation split chooses
VALIDATION_COMPARED = tuple(theirs for _, theirs in HEADLINE_PAIRS)  # the baselines shown beside it


def validation_rows(scale: dict, setting: str) -> list[list[str]]:
    """MOX-LoRA with α by the utility rule and by the forget validation split, and the LoRA baselines it is
    compared with, all with forget quality on the split's test rows (mean ± sd over seeds). Empty when no seed
    made the validation-split choice."""
    seeds = sorted(scale["runs"])
    key_of = {
        VALIDATION_MOX: f"{setting}/lora/{VALIDATION_MOX}",
        f"{VALIDATION_MOX}+{VALIDATION_VARIANT}": f"{setting}/lora/{VALIDATION_MOX}+{VALIDATION_VARIANT}",
        **{method: f"{setting}/lora/{method}" for method in VALIDATION_COMPARED},
    }
    if not any(chosen_run(scale, seed, key_of[f"{VALIDATION_MOX}+{VALIDATION_VARIANT}"]) for seed in seeds):
        return []
    utility = manifest_of(scale).get("utility_metric", "model_utility")
    rows = []
    for name, key in key_of.items():
        runs = [(seed, chosen_run(scale, seed, key)) for seed in seeds]
        runs = [(seed, run) for seed, run in runs if run]
        if not runs:
            continue
        test_fq = [
            selection.forget_quality_on_test_rows(run, scale["runs"][seed].get(f"{setting}-retain") or {})
            for seed, run in runs
        ]
        label = "MOX (α: the largest that passes)" if name == VALIDATION_MOX else variant_label(name)
        rows.append(
            [
                label,
                ", ".join(sorted({fmt_lr(run.get("learning_rate")) for _, run in runs})),
                ", ".join(sorted({fmt_number(run["alpha"]) for _, run in runs if run.get("alpha") is not None})) or "–",
                aggregate(test_fq),
                aggregate([run["metrics"].get("forget_quality") for _, run in runs]),
                aggregate([run["metrics"].get(utility) for _, run in runs]),
                f"{sum(v is not None for v in test_fq)} of {len(runs)}",
            ]
        )
    return rows


def alpha_sweep_rows(scale: dict, setting: str) -> list[list[str]]:
    """MOX-LoRA plain at every α of the sweep (the learning rate the selection used)."""
    metrics = table_metrics(scale)
    seeds = sorted(scale["runs"])
    by_alpha: dict = defaultdict(list)
    for seed in seeds:
        choices = scale["selection"].get(seed, {}).get("settings", {}).get(setting, {}).get("choices", {})
        # The sweep is the plain-MOX choice flagged alpha_sweep (older files: the one with most evaluated runs).
        candidates = [c for k, c in choices.items() if k.endswith("/mox") and "alpha_star" in c]
        if not candidates:
            continue
        mox = max(candidates, key=lambda c: (bool(c.get("alpha_sweep")), len(c.get("evaluated", []))))
        chosen_lr = scale["runs"][seed].get(mox["run"], {}).get("learning_rate")
        for name in mox["evaluated"]:
            run = scale["runs"][seed].get(name)
            if run and run.get("learning_rate") == chosen_lr and run.get("alpha") is not None:
                by_alpha[run["alpha"]].append(run)
    rows = []
    for alpha in sorted(by_alpha, reverse=True):
        runs = by_alpha[alpha]
        rows.append(
            [fmt_number(alpha), fmt_lr(runs[0].get("learning_rate"))]
            + [aggregate([r["metrics"].get(k) for r in runs]) for k, _ in metrics]
        )
    return rows


def all_runs_rows(scale: dict, setting: str) -> list[list[str]]:
    """Every evaluated unlearning run (the grid points the rule looked at), seed by seed."""
    metrics = table_metrics(scale)
    rows = []
    for seed in sorted(scale["runs"]):
        for name, run in sorted(scale["runs"][seed].items()):
            if run.get("kind") != "unlearn" or run.get("setting") != setting:
                continue
            status = run.get("status", "ok")
            wall = run.get("wall_time_s") or {}
            rows.append(
                [name, str(seed)]
                + [fmt_number(run.get("metrics", {}).get(k)) for k, _ in metrics]
                + [fmt_number(wall.get("train")), fmt_number(wall.get("evaluate")), status]
            )
    return rows


def plot_scale(name: str, scale: dict, out: Path) -> Path | None:
    """The scale's plot_axes (forget quality, log, against model utility for TOFU): every evaluated run of every
    seed, the selected ones highlighted."""
    x_key, y_key, y_scale = manifest_of(scale).get("plot_axes", ("model_utility", "forget_quality", "log"))
    headers = dict(table_metrics(scale))
    points, thresholds = [], set()
    for seed, runs in scale["runs"].items():
        for setting_name, setting in scale["selection"].get(seed, {}).get("settings", {}).items():
            if setting.get("utility_threshold") is not None:
                thresholds.add(setting["utility_threshold"])
            chosen = {c["run"] for c in setting.get("choices", {}).values()}
            for run_name, run in runs.items():
                metrics = run.get("metrics", {})
                fq, mu = metrics.get(y_key), metrics.get(x_key)
                if run.get("setting") != setting_name or fq is None or mu is None:
                    continue
                if run.get("kind") in ("target", "retain"):
                    label = run["kind"]
                else:
                    label = method_label(run) + ("" if run.get("weights") == "lora" else f" ({run.get('weights')})")
                    if run.get("alpha") is not None:  # the α sweep's runs (other methods record none)
                        label += f" α={run['alpha']:g}"
                y = max(fq, 1e-300) if y_scale == "log" else fq  # a p-value of 0 still gets a point on a log axis
                points.append((label, mu, y, run_name in chosen or run.get("kind") != "unlearn"))
    if not points:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5))
    ax = fig.add_subplot()
    # Selected runs get a colour and marker each and a legend entry (labels next to points collide when runs
    # barely moved); the other evaluated runs are small grey dots.
    for _label, mu, fq, highlighted in points:
        if not highlighted:
            ax.scatter([mu], [fq], s=14, color="0.6", alpha=0.5)
    markers = "osD^vP*Xh<>p"
    selected = sorted({label for label, *_, highlighted in points if highlighted})
    for i, label in enumerate(selected):
        xs = [mu for lab, mu, _, high in points if high and lab == label]
        ys = [fq for lab, _, fq, high in points if high and lab == label]
        ax.scatter(xs, ys, s=55, marker=markers[i % len(markers)], color=f"C{i % 10}", label=label, alpha=0.85)
    for threshold in sorted(thresholds):
        ax.axvline(threshold, color="0.3", linestyle="--", linewidth=1)
    if thresholds:
        ax.scatter([], [], s=14, color="0.6", label="other evaluated runs")
        ax.plot([], [], color="0.3", linestyle="--", linewidth=1, label="utility floor (0.9 × target)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_yscale(y_scale)
    x_label, y_label = (headers.get(key, key).rstrip(" ↑↓") for key in (x_key, y_key))
    ax.set_xlabel(x_label)
    ax.set_ylabel(f"{y_label} (log scale)" if y_scale == "log" else y_label)
    ax.set_title(f"{name} scale: {y_label} vs {x_label}, every seed (selected runs in colour)")
    ax.grid(True, which="both", alpha=0.3)
    path = out / name / "forget_quality_vs_utility.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    return path


def cost_section(cost: dict | None) -> list[str]:
    if not cost:
        return ["_No cost results yet: run `python benchmarks/cost.py`._", ""]
    lines = [f"Per optimizer step: {cost.get('description', '')}.", ""]
    rows = [
        [
            row["method"],
            row["weights"],
            fmt_number(row.get("step_time_s")),
            fmt_number(row.get("step_time_iqr_s")),
            fmt_number(row.get("step_time_ratio")),
            fmt_number(row.get("peak_memory_mb")),
            fmt_number(row.get("peak_memory_ratio")),
            row.get("status", "ok"),
        ]
        for row in cost.get("methods", [])
    ]
    lines += table(
        ["method", "weights", "s / step", "IQR s", "× fine-tune step", "peak MB", "× fine-tune memory", "status"], rows
    )
    lines += [""]
    against = cost.get("mox_vs_grad_diff") or {}
    if against:
        parts = [
            f"{weights}: step {fmt_number(r['step_time'])}×, peak memory {fmt_number(r['peak_memory'])}×"
            for weights, r in sorted(against.items())
        ]
        lines += ["MOX against GradDiff on the same batches (" + "; ".join(parts) + ").", ""]
    evaluation = cost.get("evaluation")
    if evaluation:
        lines += ["### Evaluation throughput", "", f"{evaluation.get('description', '')}.", ""]
        rows = [
            [
                str(row["batch_size"]),
                fmt_number(row.get("samples_per_s")),
                fmt_number(row.get("wall_time_s")),
                fmt_number(row.get("peak_memory_mb")),
            ]
            for row in evaluation.get("runs", [])
        ]
        lines += table(["batch size", "samples / s", "wall s", "peak MB"], rows) + [""]
    env = cost.get("environment", {})
    lines += [f"Measured on: {env.get('device')} ({env.get('cpu_count')} CPUs), commit `{env.get('git_commit')}`.", ""]
    return lines


def devices_line(scale: dict) -> str:
    """Where the runs of a scale were measured, from their recorded environments."""
    machines = sorted(
        {
            f"{env.get('device')} ({env.get('cpu_count')} CPUs, torch {env.get('versions', {}).get('torch')})"
            for runs in scale["runs"].values()
            for run in runs.values()
            for env in [run.get("environment") or {}]
        }
    )
    return f"Measured on: {'; '.join(machines)}."


def chunk_state(chunk: dict) -> str:
    if chunk.get("recorded_only"):
        return "recorded only (ran nothing)"
    return {True: "complete", False: "interrupted (time to its last choice)"}.get(chunk.get("complete"), "–")


def chunk_rows(scale: dict) -> list[list[str]]:
    """One row per recorded invocation of run_benchmark.py (an older selection file: its last one only)."""
    rows = []
    for seed in sorted(scale["selection"]):
        record = scale["selection"][seed]
        last = {
            "settings": list(record.get("settings", {})),
            "methods": ["(not recorded: the file's methods are every invocation's)"],
            "wall_time_s": record.get("wall_time_s_this_invocation"),
            "git_commit": (record.get("environment") or {}).get("git_commit"),
        }
        for chunk in record.get("invocations") or ([last] if last["wall_time_s"] is not None else []):
            rows.append(
                [
                    str(seed),
                    ", ".join(chunk["settings"]),
                    ", ".join(chunk["methods"]),
                    fmt_number(chunk["wall_time_s"] / 60),
                    chunk_state(chunk),
                    chunk.get("finished", "–"),
                    (chunk.get("git_commit") or "–")[:7],
                ]
            )
    return rows


def protocol_notes(manifest: dict) -> list[str]:
    """What a scale's manifest says about how its rows were chosen, beyond the rule (empty for older files)."""
    notes = []
    if manifest.get("method_weights"):
        both = ", ".join(sorted(manifest["method_weights"]))
        notes.append(
            f"Baselines run with LoRA; {both} with {' and '.join(next(iter(manifest['method_weights'].values())))}."
        )
    if manifest.get("sweep_every_alpha") is False:
        notes.append(
            "The α sweep is evaluated largest first up to the first α that passes the rule (which is α*), so "
            "smaller α have no rows."
        )
    if manifest.get("select_on_seed") is not None:
        notes.append(
            f"Learning rates and α* are selected on seed {manifest['select_on_seed']} only and rerun unchanged on "
            "the other seeds, so the spread over seeds is that of fixed settings; mean ± sample standard "
            "deviation over seeds."
        )
    return [" ".join(notes), ""] if notes else []


def render(results: Path, readme_dir: Path, write_plots: bool = True) -> str:
    """The Markdown that goes between the markers."""
    scales = load_results(results) if results.is_dir() else {}
    cost = load_cost(results)
    lines = [
        "<!-- generated by benchmarks/make_tables.py from benchmarks/results/*.json; do not edit by hand -->",
        "",
    ]
    ordered = [s for s in SCALE_ORDER if s in scales] + sorted(s for s in scales if s not in SCALE_ORDER)
    if not ordered:
        lines += ["_No benchmark results yet._", ""]
    for name in ordered:
        scale = scales[name]
        seeds = sorted(scale["runs"])
        manifest = next(iter(scale["selection"].values()), {}).get("scale", {})
        lines += [f"### Scale `{name}` (seeds {', '.join(map(str, seeds))})", ""]
        if manifest.get("description"):
            lines += [manifest["description"] + ".", ""]
        if name == "toy":
            lines += ["_Plumbing only (a random tiny model): these numbers mean nothing._", ""]
        lines += [devices_line(scale), ""]
        budget = manifest.get("unlearn_budget")
        if budget:
            lines += [
                f"Budget (every method): `{json.dumps(budget)}`; learning-rate grids: "
                f"`{json.dumps(manifest.get('lr_grid'))}`; α sweep `{manifest.get('alphas')}`.",
                "",
            ]
        lines += protocol_notes(manifest)
        settings = sorted({run.get("setting") for runs in scale["runs"].values() for run in runs.values()} - {None})
        for setting in settings:
            threshold = [
                sel.get("settings", {}).get(setting, {}).get("utility_threshold") for sel in scale["selection"].values()
            ]
            lines += [f"#### {setting}: selected runs", ""]
            if any(t is not None for t in threshold):
                lines += [f"Utility threshold (0.9 × target): {aggregate(threshold)}.", ""]
            header = ["method", "weights", "lr", "α"] + [h for _, h in table_metrics(scale)]
            header += ["step cost ×", "memory ×", "seeds"]
            lines += table(header, selected_rows(scale, setting, cost))
            lines += [
                "",
                "† no grid point met the utility rule; the smallest learning rate is shown. "
                "Step cost and memory are relative to a plain fine-tuning step (see Cost below).",
                "",
            ]
            headline = headline_rows(scale, setting)
            if headline:
                lines += [f"#### {setting}: MOX against GA, NPO and the task vector, seed by seed", ""]
                lines += table(
                    ["forget quality difference"]
                    + [f"seed {seed}" for seed in sorted(scale["runs"])]
                    + ["MOX on seeds", "utility difference (mean ± sd)"],
                    headline,
                )
                lines += ["", "Each seed's selected runs; a positive difference means MOX forgot more.", ""]
            sweep = alpha_sweep_rows(scale, setting)
            if sweep:
                lines += [f"#### {setting}: MOX-LoRA α sweep", ""]
                lines += table(["α", "lr"] + [h for _, h in table_metrics(scale)], sweep) + [""]
            validated = validation_rows(scale, setting)
            if validated:
                lines += [f"#### {setting}: α chosen on a forget validation split", "", selection.VALIDATION_RULE, ""]
                utility = dict(table_metrics(scale)).get(manifest_of(scale).get("utility_metric", "model_utility"))
                header = ["method", "lr", "α", "forget quality, test rows ↑", "forget quality, all rows ↑"]
                lines += table(header + [utility or "utility", "seeds with per-row values"], validated)
                lines += [
                    "",
                    "Every row is LoRA at its selected settings. A result recorded before results kept their per-row "
                    "values has no test-rows forget quality ('–').",
                    "",
                ]
            lines += [f"<details><summary>{setting}: every evaluated run</summary>", ""]
            header = ["run", "seed"] + [h for _, h in table_metrics(scale)] + ["train s", "eval s", "status"]
            lines += table(header, all_runs_rows(scale, setting)) + ["", "</details>", ""]
        chunks = chunk_rows(scale)
        if chunks:
            lines += [f"<details><summary>{name}: chunks run (one invocation each)</summary>", ""]
            header = ["seed", "settings", "methods", "wall time (min)", "state", "finished", "commit"]
            lines += table(header, chunks)
            lines += ["", "</details>", ""]
        if write_plots:
            plot = plot_scale(name, scale, results)
            if plot is not None:
                relative = plot.relative_to(readme_dir) if plot.is_relative_to(readme_dir) else plot
                lines += [f"![{name}: forget quality vs model utility]({relative.as_posix()})", ""]
        else:
            plot = results / name / "forget_quality_vs_utility.png"
            if plot.is_file():
                relative = plot.relative_to(readme_dir) if plot.is_relative_to(readme_dir) else plot
                lines += [f"![{name}: forget quality vs model utility]({relative.as_posix()})", ""]
    lines += ["### Gradient surgery and SFR-on against GA", ""] + surgery_section(load_surgery(results))
    lines += ["### Cost", ""] + cost_section(cost)
    lines += ["### Export cost", ""] + exports_section(load_exports(results))
    return "\n".join(lines).rstrip() + "\n"


def replace_between_markers(text: str, body: str, where: str) -> str:
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"{where}: add the markers {BEGIN} and {END} (in that order) where the tables go")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{body}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--readme", default=str(REPO / "benchmarks" / "README.md"))
    parser.add_argument("--check", action="store_true", help="exit 1 if the README tables are out of date")
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    if not readme.is_file():
        raise SystemExit(f"{readme} not found: create it with the markers {BEGIN} and {END}")
    text = readme.read_text()
    body = render(Path(args.results), readme.parent.resolve(), write_plots=not args.check)
    updated = replace_between_markers(text, body, str(readme))
    if args.check:
        if updated != text:
            print(f"{readme} is out of date: run python benchmarks/make_tables.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(updated)
    print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
