"""The benchmark scales (toy, cpu, gpu) as data: data settings, budgets, learning-rate grids, α sweep, evaluation.

A scale only supplies overrides of the TOFU SmolLM2 recipes (recipes/tofu/smollm2/); the protocol of each method
(its loss settings) lives in its recipe. The TOFU folder is not part of a scale: `with_tofu` fills it in from the
benchmark's `--tofu` argument. `scale_manifest` is the scale as selection.json records it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

MOX_FAMILY = "mox"  # memorize, then extrapolate: an α sweep and a momentum variant from one memorization run
TOFU_RECIPES = "recipes/tofu/smollm2"
# (metric key, column header) of a scale's tables; arrows follow the evaluation report's convention.
TOFU_TABLE_METRICS = (
    ("forget_quality", "forget quality ↑"),
    ("model_utility", "model utility ↑"),
    ("forget_rougeL_recall", "forget ROUGE-L ↓"),
    ("retain_rougeL_recall", "retain ROUGE-L ↑"),
    ("privleak", "privleak (→0)"),
)
MUSE_TABLE_METRICS = (
    ("verbmem_f", "verbmem forget ↓"),
    ("knowmem_f", "knowmem forget ↓"),
    ("knowmem_r", "knowmem retain ↑"),
    ("privleak", "privleak vs retain (→0)"),
)


@dataclass(frozen=True)
class Setting:
    """One data configuration of a scale (a forget split): the whole `data:` section of its runs."""

    name: str
    data: dict


@dataclass(frozen=True)
class MoxVariant:
    """A change to MOX's memorization run, measured at MOX-LoRA's selected learning rate with the same rule."""

    name: str  # suffix of its result names and selection keys (mox+<name>)
    description: str
    training: dict  # overrides of the memorization run
    momentum: bool = False  # True: the momentum export at the plain sweep's α*; False: plain, over its own sweep
    alphas: tuple[float, ...] = ()  # its own α sweep, largest first (empty: the scale's)


@dataclass(frozen=True)
class Scale:
    """Everything that sizes a benchmark. `unlearn` holds the training fields every method shares."""

    name: str
    description: str
    base_model: str  # a toolkit model name or folder; "tiny" = a random 2-layer Llama (plumbing only)
    settings: tuple[Setting, ...]
    baseline_weights: tuple[str, ...]  # "lora" and/or "full" for the non-MOX methods (unless in method_weights)
    mox_weights: tuple[str, ...]
    seeds: tuple[int, ...]  # the seeds the scale is meant to be run with (one --seed per invocation)
    finetune: dict
    unlearn: dict
    lr_grid: dict  # (family, weights) -> learning rates, largest first
    alphas: tuple[float, ...]  # MOX α sweep, largest first
    eval_options: dict
    eval_rows: dict  # set -> number of evenly spaced rows kept (absent: all rows); evaluation.options.rows
    lora: dict = field(default_factory=lambda: {"r": 8, "lora_alpha": 16})
    method_settings: dict = field(default_factory=dict)  # method -> budget fields (stated in the results)
    fmt: dict = field(default_factory=dict)
    use_cpu: bool = True
    method_weights: dict = field(default_factory=dict)  # method -> its weights, where not baseline_weights
    # False: evaluate the α sweep largest first only until one α passes the selection rule. The first to pass is
    # the largest that passes, so the choice is the same; the smaller α are not evaluated (10 minutes each at
    # the protocol scale).
    sweep_every_alpha: bool = True
    recipes: str = TOFU_RECIPES  # the folder of its recipes (finetune_*, evaluate_retain, <method>_lora)
    utility_metric: str = "model_utility"  # what the selection rule keeps at 0.9 x the target's
    methods: tuple[str, ...] | None = None  # run by default (None: every registered method)
    table_metrics: tuple = TOFU_TABLE_METRICS
    plot_axes: tuple[str, str, str] = ("model_utility", "forget_quality", "log")  # x, y, y-axis scale
    mox_variants: tuple[MoxVariant, ...] = ()
    # The seed whose selection (learning rate, α*) every other seed reruns as it is; None: each seed selects its
    # own. Selecting once keeps the other seeds an honest measure of seed-to-seed spread at fixed settings.
    select_on_seed: int | None = None
    # True: also choose plain MOX's α on a validation split of the forget set (selection.VALIDATION_RULE), over
    # every α of the sweep at lr*; needs a holdout set (TOFU).
    forget_validation: bool = False

    def weights_of(self, method: str, family: str) -> tuple[str, ...]:
        """The weights `method` runs with at this scale: the MOX family's, or its own, or the baselines'."""
        if family == MOX_FAMILY:
            return self.mox_weights
        return self.method_weights.get(method, self.baseline_weights)


# Benchmark overrides per method that every scale shares. Pinned so that the momentum rows mean the same thing
# whatever the library default: at the CPU budget (half an epoch) a per-epoch refresh would equal plain MOX;
# benchmarks/momentum_refresh.py compares the two.
METHOD_SETTINGS = {"mox": {"momentum_refresh": "steps"}}


def method_families() -> dict[str, str]:
    """Method -> family, read from each registered trainer (each family has its own grid per scale and weights)."""
    from llm_unlearn.methods import METHODS

    return {name: method.trainer.family for name, method in METHODS.items()}


def scale_manifest(scale: Scale) -> dict:
    return {
        "name": scale.name,
        "description": scale.description,
        "base_model": scale.base_model,
        "settings": {s.name: s.data for s in scale.settings},
        "baseline_weights": list(scale.baseline_weights),
        "mox_weights": list(scale.mox_weights),
        "method_weights": {method: list(weights) for method, weights in scale.method_weights.items()},
        "seeds": list(scale.seeds),
        "finetune": scale.finetune,
        "unlearn_budget": scale.unlearn,
        "lr_grid": {f"{family}/{weights}": list(lrs) for (family, weights), lrs in scale.lr_grid.items()},
        "alphas": list(scale.alphas),
        "sweep_every_alpha": scale.sweep_every_alpha,
        "select_on_seed": scale.select_on_seed,
        "eval_options": scale.eval_options,
        "eval_rows": scale.eval_rows,
        "lora": scale.lora,
        "method_settings": {**METHOD_SETTINGS, **scale.method_settings},
        "recipes": scale.recipes,
        "utility_metric": scale.utility_metric,
        "table_metrics": [list(pair) for pair in scale.table_metrics],
        "plot_axes": list(scale.plot_axes),
        "mox_variants": [asdict(variant) for variant in scale.mox_variants],
        "forget_validation": scale.forget_validation,
        "families": method_families(),
    }


def with_tofu(scale: Scale, tofu: str) -> Scale:
    """The scale with `tofu` (a folder of TOFU split files, or a Hub id) as the source of its TOFU settings."""
    settings = tuple(
        replace(s, data={**s.data, "source": tofu}) if s.data.get("dataset") == "tofu" else s for s in scale.settings
    )
    return replace(scale, settings=settings)


TOY = Scale(
    name="toy",
    description="random 2-layer Llama on tiny synthetic authors: exercises every code path of the harness "
    "(settings, LoRA and full weights, grids, α sweep, momentum, selection) in seconds; its numbers mean nothing",
    base_model="tiny",
    settings=(
        Setting(
            "f1",
            {"dataset": "synthetic", "n_authors": 5, "qa_per_author": 2, "forget_authors": 1, "holdout_authors": 1},
        ),
        Setting(
            "f2",
            {"dataset": "synthetic", "n_authors": 6, "qa_per_author": 2, "forget_authors": 2, "holdout_authors": 1},
        ),
    ),
    baseline_weights=("lora", "full"),
    mox_weights=("lora", "full"),
    seeds=(0,),
    finetune={"learning_rate": 1e-3, "num_train_epochs": 1, "per_device_train_batch_size": 4},
    unlearn={"max_steps": 2, "per_device_train_batch_size": 2, "warmup_steps": 0},
    lr_grid={
        ("ascent", "lora"): (1e-3, 1e-4),
        ("descent", "lora"): (1e-3, 1e-4),
        (MOX_FAMILY, "lora"): (1e-3,),
        ("representation", "lora"): (1e-3, 1e-4),
        ("ascent", "full"): (1e-4, 1e-5),
        ("descent", "full"): (1e-4, 1e-5),
        (MOX_FAMILY, "full"): (1e-4, 1e-5),
        ("representation", "full"): (1e-4, 1e-5),
    },
    alphas=(2.0, 0.5),  # a short sweep: the toy checks plumbing, the real scales sweep 0.5 to 8 or 16
    eval_options={"batch_size": 4, "max_new_tokens": 4},
    eval_rows={"real_authors": 3, "world_facts": 3},
    lora={"r": 4, "lora_alpha": 8},
    method_settings={
        "sfron": {"fisher_samples": 4, "fisher_batch_size": 2},
        # The random 2-layer model: RMU's default layer and pattern name SmolLM2's layers 5..7.
        "rmu": {"layer": 1, "trainable_pattern": r"layers\.[01]\."},
    },
)

CPU = Scale(
    name="cpu",
    description="real TOFU forget01 (2 authors) + the first 8 retain authors, SmolLM2-135M-Instruct with LoRA "
    "(MOX also with full weights); 3 fine-tuning epochs, 5 unlearning steps of 4 + 4 rows, evaluation on "
    "evenly spaced subsets (forget 20 of 40 rows, holdout 20 of 40, 8 rows each of retain / real authors / "
    "world facts), 40 new tokens, empty system prompt; sized for about an hour on a shared 2-core CPU",
    base_model="smollm2-135m-instruct",
    settings=(Setting("forget01", {"dataset": "tofu", "forget_split": "forget01", "retain_authors": 8}),),
    baseline_weights=("lora",),
    mox_weights=("lora", "full"),
    seeds=(0, 1),
    # One epoch left the forget set barely learned (target vs retain forget quality 0.87 on a first try).
    finetune={"learning_rate": 2e-3, "num_train_epochs": 3, "per_device_train_batch_size": 8},
    unlearn={"max_steps": 5, "per_device_train_batch_size": 4, "warmup_steps": 0},
    lr_grid={
        # Every baseline grid starts above MOX-LoRA's learning rate: at 1e-3 all of them still kept 0.9x the
        # target's utility after 5 steps, so the utility rule only binds from 3e-3.
        ("ascent", "lora"): (3e-3, 1e-3, 3e-4, 1e-4),
        ("descent", "lora"): (3e-3, 1e-3, 3e-4),
        (MOX_FAMILY, "lora"): (1e-3,),
        (MOX_FAMILY, "full"): (3e-5, 1e-5),
        # RMU trains 3 down-projections' adapters only (not every adapter), and its whole effect must come
        # within 5 steps: its grid reaches one step above the other baselines'.
        ("representation", "lora"): (1e-2, 3e-3, 1e-3),
    },
    alphas=(16.0, 8.0, 4.0, 2.0, 1.0, 0.5),
    eval_options={"batch_size": 10, "max_new_tokens": 40},
    eval_rows={"forget": 20, "holdout": 20, "retain": 8, "real_authors": 8, "world_facts": 8},
    method_settings={"sfron": {"fisher_samples": 16, "fisher_batch_size": 4}},
    # SmolLM2's template otherwise inserts a 16-token default system prompt into every sequence (~18 % of the
    # tokens); an empty one is recorded in every result.
    fmt={"system_prompt": ""},
)

GPU = Scale(
    name="gpu",
    description="full TOFU forget01/05/10, SmolLM2-135M-Instruct, full weights and LoRA, MOX paper budget "
    "(10 epochs, batch 32); run with --seed 0, 1 and 2",
    base_model="smollm2-135m-instruct",
    settings=tuple(
        Setting(split, {"dataset": "tofu", "forget_split": split}) for split in ("forget01", "forget05", "forget10")
    ),
    baseline_weights=("lora", "full"),
    mox_weights=("lora", "full"),
    seeds=(0, 1, 2),
    finetune={"learning_rate": 1e-4, "num_train_epochs": 5, "per_device_train_batch_size": 32},
    unlearn={"num_train_epochs": 10, "per_device_train_batch_size": 32, "warmup_steps": 0.1},
    lr_grid={
        ("ascent", "lora"): (1e-4, 3e-5),
        ("descent", "lora"): (3e-4, 1e-4),
        (MOX_FAMILY, "lora"): (3e-4, 1e-4),
        # RMU: 10-20x its full-weight rates, as the other families' LoRA grids are.
        ("representation", "lora"): (1e-3, 3e-4),
        ("ascent", "full"): (1e-5, 3e-6),
        ("descent", "full"): (3e-5, 1e-5),
        (MOX_FAMILY, "full"): (3e-5, 1e-5),
        # The RMU paper's 5e-5 (Zephyr-7B, three down-projections), and one step below it.
        ("representation", "full"): (5e-5, 1e-5),
    },
    alphas=(8.0, 4.0, 2.0, 1.0, 0.5),
    eval_options={"batch_size": 32, "max_new_tokens": 200},
    eval_rows={},
    use_cpu=False,
)

# What could change MOX's standing against GA and NPO (each measured after the plain comparison, --methods mox).
PROTOCOL_MOX_VARIANTS = (
    MoxVariant(
        "refresh_epoch",
        "momentum refreshed once per epoch instead of every step (10 refreshes over the run)",
        {"momentum_refresh": "epoch"},
        momentum=True,
    ),
    MoxVariant("npo_forget", "NPO-form forget loss in the memorization run (β 0.1)", {"forget_loss": "npo"}),
    MoxVariant(
        "kl4",
        "retain KL weight 4 (a memorization that moves the retain outputs less), α up to 64",
        {"kl_weight": 4.0},
        alphas=(64.0, 32.0, 16.0, 8.0, 4.0, 2.0),
    ),
)

# The methods the comparison runs on both LoRA and full weights; the other baselines run LoRA only.
BOTH_WEIGHTS = ("ga", "grad_diff", "npo", "task_vector")

PROTOCOL = Scale(
    name="protocol",
    description="TOFU forget01 (every forget row, 40, and the 40 holdout rows) and forget05 (200 + 200), the "
    "first 8 retain authors, SmolLM2-135M-Instruct; the MOX paper's budget for every method (10 epochs, batch "
    "32, 10 % warm-up); LoRA for every method, full weights too for MOX, GA, GradDiff, NPO and the task vector; "
    "evaluation on the whole real-authors (100) and world-facts (117) sets, 40 evenly spaced retain rows, "
    "200 new tokens, empty system prompt; run one seed (0, 1, 2) of one setting per invocation, in chunks of "
    "--methods (see benchmarks/README.md)",
    base_model="smollm2-135m-instruct",
    settings=tuple(
        Setting(split, {"dataset": "tofu", "forget_split": split, "retain_authors": 8})
        for split in ("forget01", "forget05")
    ),
    baseline_weights=("lora",),
    mox_weights=("lora", "full"),
    seeds=(0, 1, 2),
    # TOFU's five fine-tuning epochs; the CPU scale's three left the forget set half-learned (ROUGE-L 0.48).
    finetune={"learning_rate": 2e-3, "num_train_epochs": 5, "per_device_train_batch_size": 8},
    unlearn={"num_train_epochs": 10, "per_device_train_batch_size": 32, "warmup_steps": 0.1},
    lr_grid={
        # 20 optimizer steps (forget01) of 32 rows: about 4x the CPU scale's updates, so every grid starts one
        # step below the CPU scale's largest rate.
        ("ascent", "lora"): (1e-3, 3e-4, 1e-4),
        ("descent", "lora"): (1e-3, 3e-4, 1e-4),
        (MOX_FAMILY, "lora"): (1e-3, 3e-4),
        ("representation", "lora"): (3e-3, 1e-3, 3e-4),
        ("ascent", "full"): (3e-5, 1e-5, 3e-6),
        ("descent", "full"): (3e-5, 1e-5, 3e-6),
        (MOX_FAMILY, "full"): (3e-5, 1e-5),
    },
    alphas=(16.0, 8.0, 4.0, 2.0, 1.0, 0.5),
    eval_options={"batch_size": 20, "max_new_tokens": 200},
    # Generation dominates (up to 200 new tokens per row, 377 rows with 40 retain rows). Measured on the 2-core
    # CPU: 5 to 6.5 minutes for a model that still ends its answers (retain 383 s, target 368 s, MOX α = 4 and
    # 8), 13 minutes for one that runs every answer to the 200-token cap (MOX α = 16). More retain rows would
    # push a broken model's evaluation past 15 minutes; 40 of the 160 retain rows keep the worst case near 13.
    eval_rows={"retain": 40},
    method_settings={"sfron": {"fisher_samples": 32, "fisher_batch_size": 8}},
    fmt={"system_prompt": ""},
    method_weights={method: ("lora", "full") for method in BOTH_WEIGHTS},
    sweep_every_alpha=False,
    select_on_seed=0,
    mox_variants=PROTOCOL_MOX_VARIANTS,
    forget_validation=True,
)

NEWS = Scale(
    name="news",
    description="the embedded MUSE-style news (6 forget, 12 retain and 6 holdout articles of invented events), "
    "SmolLM2-135M-Instruct with LoRA; target (forget + retain) and retain models fine-tuned on the raw articles, "
    "then every method for 10 epochs of 4 articles with 10 % warm-up; MUSE suite: verbmem on the forget "
    "articles, knowmem on forget and retain questions, privleak against the retain model; the selection's "
    "utility is knowmem on retain",
    base_model="smollm2-135m-instruct",
    settings=(Setting("news", {"dataset": "synthetic_news", "news_articles": 6}),),
    baseline_weights=("lora",),
    mox_weights=("lora",),
    seeds=(0,),
    finetune={"learning_rate": 1e-3, "num_train_epochs": 5, "per_device_train_batch_size": 4},
    unlearn={"num_train_epochs": 10, "per_device_train_batch_size": 4, "warmup_steps": 0.1},
    # The protocol's LoRA grids for the families of its methods (also about 20 optimizer steps per run).
    lr_grid={key: lrs for key, lrs in PROTOCOL.lr_grid.items() if key[1] == "lora" and key[0] != "representation"},
    alphas=PROTOCOL.alphas,
    eval_options={"batch_size": 8},
    eval_rows={},
    fmt={"max_length": 256},  # the whole format section: the news recipes' length limit
    recipes="recipes/muse/synthetic_news",
    utility_metric="knowmem_r",
    methods=("mox", "ga", "grad_diff", "npo", "task_vector"),
    table_metrics=MUSE_TABLE_METRICS,
    plot_axes=("knowmem_r", "knowmem_f", "linear"),
)

SCALES = {scale.name: scale for scale in (TOY, CPU, GPU, PROTOCOL, NEWS)}
