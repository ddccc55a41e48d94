"""`llm-unlearn`: one subcommand per stage, each reading a YAML config (see recipes/).

    llm-unlearn finetune    recipes/synthetic/finetune_target.yaml
    llm-unlearn unlearn     recipes/synthetic/ga_lora.yaml training.learning_rate=2e-5
    llm-unlearn extrapolate recipes/synthetic/mox_lora.yaml
    llm-unlearn evaluate    recipes/synthetic/evaluate.yaml evaluation.model_path=runs/x/unlearned
    llm-unlearn report      runs/a runs/b --out report/
    llm-unlearn push        runs/x/unlearned --repo-id you/name
    llm-unlearn materialize runs/x/alpha_8  (writes the full weights of a lazy MOX α folder)
    llm-unlearn methods     (lists the registered methods and their options)
    llm-unlearn demo        (the offline CPU demo: fine-tune, unlearn with MOX/GA/GradDiff, evaluate, report)

Every stage also runs under `accelerate launch [--config_file recipes/accelerate_configs/...] -m llm_unlearn.cli ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

CONFIG_HELP = (
    "YAML config with sections model, data, format, method, training, evaluation (see recipes/). "
    "Field names mirror the dataclasses; `llm-unlearn methods` lists each method's training fields."
)
OVERRIDE_HELP = (
    "section.field=value overrides, parsed as YAML (e.g. training.learning_rate=2e-5 data.forget_split=forget05)"
)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help=CONFIG_HELP)
    parser.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="delete an existing run folder and start again")
    group.add_argument("--resume", action="store_true", help="continue an existing run from its last checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-unlearn",
        description="Machine unlearning for LLMs: MOX (memorize, then extrapolate), GA-family and surgery baselines, "
        "TOFU/MUSE evaluation. Each subcommand is one stage driven by a YAML config.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Runs never overwrite an existing folder silently: use --overwrite or --resume.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "finetune", help="fine-tune the target (forget+retain) or retain model; LoRA is merged at the end"
    )
    _add_run_arguments(p)
    p = sub.add_parser("unlearn", help="unlearn with any registered method from the target model")
    _add_run_arguments(p)
    p = sub.add_parser(
        "extrapolate",
        help="MOX: memorize, then extrapolate for one or many alpha (or only extrapolate a saved memorization adapter)",
    )
    _add_run_arguments(p)
    p = sub.add_parser(
        "evaluate", help="run an evaluation suite (TOFU, MUSE, custom, lm_eval) on a model or adapter folder"
    )
    _add_run_arguments(p)

    p = sub.add_parser("report", help="turn run folders into a Markdown table and plots")
    p.add_argument("runs", nargs="+", help="run or evaluation folders (each holding summary.json somewhere below)")
    p.add_argument("--out", required=True, help="folder for report.md and the PNG plots")

    p = sub.add_parser("push", help="push an unlearned adapter/model folder to the Hub with a generated model card")
    p.add_argument("run_dir", help="folder with the adapter or model (and run_info.json beside or inside it)")
    p.add_argument("--repo-id", required=True, help="Hub repository, e.g. you/smollm2-tofu-mox")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--endpoint", default=None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    p.add_argument("--revision", default=None, help="existing branch to push to (default: main)")
    p.add_argument("--commit-message", default=None, help="commit message (default: generated)")

    p = sub.add_parser(
        "materialize",
        help="write the full weights of lazy MOX α folders (alpha_<a>/ of a full-weight run) in place",
    )
    p.add_argument("folders", nargs="+", help="lazy α folders, e.g. runs/x/alpha_8")

    sub.add_parser("methods", help="list registered methods and their training options")

    p = sub.add_parser(
        "demo", help="offline CPU demo on synthetic authors with SmolLM2 (about 10-15 minutes on 2 cores)"
    )
    p.add_argument("--out", default=None, help="demo folder (default: runs/demo-<timestamp>; never overwritten)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test (numbers are meaningless)")
    return parser


def _print_methods() -> None:
    from .methods import METHODS
    from .methods.base import UnlearnConfig

    base_fields = {f.name for f in dataclasses.fields(UnlearnConfig)}
    for name, method in METHODS.items():
        print(f"{name:12s} ({method.trainer.family}) {method.trainer.summary}")
        for f in dataclasses.fields(method.config):
            if f.name not in base_fields:
                default = f.default_factory() if f.default is dataclasses.MISSING else f.default
                print(f"    {f.name} = {default!r}: {f.metadata.get('help', '')}")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "fix your input": printed as one line, not a traceback."""
    from .config import ConfigError
    from .data.io import DataError
    from .extrapolate import ExtrapolationError
    from .methods.base import NonFiniteLossError
    from .models import AdapterMismatchError, ModelResolutionError
    from .runs import RunExistsError

    return (
        ConfigError,
        DataError,
        ExtrapolationError,
        NonFiniteLossError,
        AdapterMismatchError,
        ModelResolutionError,
        RunExistsError,
        FileNotFoundError,
        KeyError,
        # Any other bad value caught by a check (a reference log from other settings, ...); --verbose re-raises.
        ValueError,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except _user_errors() as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        # One line whatever the message holds (YAML and transformers messages span several).
        print(f"[llm-unlearn] error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
        if args.verbose:
            raise
        return 1


def _run(args: argparse.Namespace) -> int:
    # peft imports bitsandbytes when installed; its CPU build warns about optional kernels at import, and the
    # `kernels` package it loads them with warns (kernels 0.19) that offline mode skips its publisher check.
    for noisy in ("bitsandbytes", "kernels"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from .stages import STAGES, RunOptions, load_spec

    if args.command in STAGES:
        spec = load_spec(args.config, args.overrides)
        out = STAGES[args.command](spec, RunOptions(overwrite=args.overwrite, resume=args.resume))
        print(f"[llm-unlearn] {args.command} done: outputs in {out}", flush=True)
    elif args.command == "report":
        from .evaluation.report import make_report

        out = make_report([Path(r) for r in args.runs], Path(args.out))
        print(f"[llm-unlearn] report written to {out}")
    elif args.command == "push":
        from .hub import HubPushError, push_run

        try:
            url = push_run(
                args.run_dir,
                args.repo_id,
                private=args.private,
                endpoint=args.endpoint,
                revision=args.revision,
                commit_message=args.commit_message,
            )
        except HubPushError as err:
            print(f"[llm-unlearn] push failed: {err}", file=sys.stderr)
            return 1
        print(f"[llm-unlearn] pushed {args.run_dir} to {url}")
    elif args.command == "materialize":
        from .methods.saved import materialize_alpha

        for folder in args.folders:
            print(f"[llm-unlearn] materialized {materialize_alpha(folder)}", flush=True)
    elif args.command == "methods":
        _print_methods()
    elif args.command == "demo":
        from .demo import run_demo

        run_demo(args.out, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
