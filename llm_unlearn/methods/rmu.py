"""RMU, representation misdirection for unlearning (Li et al. 2024, the WMDP benchmark paper).

At one decoder layer ℓ, the forget set's hidden states are pulled towards a fixed random direction scaled by c
and the retain set's are held at the reference model's:

    L = mean_i mean_{t∈M_i} ‖h_θ^ℓ(x)_t − c·u‖²/d  +  α · mean_i mean_{t∈M_i} ‖h_θ^ℓ(x)_t − h_ref^ℓ(x)_t‖²/d

over forget rows (first term) and retain rows (second), d the hidden size. u is a unit vector with entries
drawn uniformly in [0, 1) then normalised, as in the authors' code; it is drawn once from the run's seed, so a
resumed run re-derives the same u. h^ℓ is the output of decoder layer ℓ (0-based: `model.layers[ℓ]`,
`hidden_states[ℓ + 1]` in transformers' convention), read by a forward hook that also stops the forward
there: the layers after ℓ and the output head are never run. M_i is every labelled position and the one
before it: every attended token of a text window, and on question/answer rows the answer, its end-of-turn
token and the prompt's last token (whose hidden state predicts the first answer token). Per-sample means, then
the mean over samples, so a DDP step over b + b rows equals one process's step over 2b rows.

Only the parameters whose names match `trainable_pattern` train (the authors update the MLP down-projections of
layers ℓ−2..ℓ); every other parameter is frozen before the optimizer is built. With LoRA the pattern picks
among the adapter's parameters. The paper's Zephyr-7B setting is layer 7, c = 6.5, α = 1200, learning rate
5e-5 on `model.layers.{5,6,7}.mlp.down_proj`. c is a length in the model's own activation space, so it does not
transfer between models: the default here is set against SmolLM2-135M's layer-7 activations (docs/design.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..data.collate import IGNORE_INDEX
from ..models import is_peft_model
from .base import RetainWeightField, UnlearnConfig, UnlearningTrainer

# --- pure functions ---------------------------------------------------------------------------------


def steering_direction(hidden_size: int, seed: int) -> torch.Tensor:
    """The unit vector u: entries uniform in [0, 1), normalised; the same for the same seed on every process."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(hidden_size, generator=generator, dtype=torch.float32)
    return u / u.norm()


def misdirection_positions(labels: torch.Tensor) -> torch.Tensor:
    """(rows, T) mask of the labelled positions and of the position before each (the one that predicts it)."""
    labelled = labels != IGNORE_INDEX
    positions = labelled.clone()
    positions[:, :-1] |= labelled[:, 1:]
    return positions


def mean_squared_distance(hidden: torch.Tensor, target: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """mean_i mean_{t∈positions_i} ‖hidden_it − target_it‖²/d, in fp32; `target` broadcasts ((d,) or like hidden)."""
    per_token = (hidden.float() - target.float()).pow(2).mean(-1)
    weights = positions.to(per_token.dtype)
    per_sample = (per_token * weights).sum(-1) / weights.sum(-1).clamp_min(1)
    return per_sample.mean()


# --- reading one layer's output -----------------------------------------------------------------------


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's list of decoder layers: the first ModuleList with config.num_hidden_layers entries."""
    count = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(
        f"rmu reads one decoder layer's output, but {type(model).__name__} has no list of "
        f"config.num_hidden_layers={count} layers: use a decoder-only transformer"
    )


class _LayerReached(Exception):
    """Carries layer ℓ's output out of the forward, which stops there."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


@contextmanager
def forward_stops_after(root: torch.nn.Module, layer: torch.nn.Module) -> Iterator[None]:
    """While active, calling `root` (or a DDP wrapper around it) returns `layer`'s output and runs nothing after
    it. The hook on `layer` raises with the output; `root.forward` is wrapped for the duration to catch it and
    return normally, so a DDP wrapper sees an ordinary forward and prepares its gradient reduction as usual."""

    def raise_output(module, args, output):
        raise _LayerReached(output[0] if isinstance(output, tuple) else output)

    forward = root.forward
    own_forward = vars(root).get("forward")  # an instance-level forward (accelerate's autocast wrapper) to restore

    def forward_to_layer(*args, **kwargs):
        try:
            forward(*args, **kwargs)
        except _LayerReached as reached:
            return reached.hidden
        raise RuntimeError("the forward never reached the hooked decoder layer")

    handle = layer.register_forward_hook(raise_output)
    root.forward = forward_to_layer
    try:
        yield
    finally:
        handle.remove()
        if own_forward is None:
            del root.forward
        else:
            root.forward = own_forward


def layer_output(model, root: torch.nn.Module, layer_index: int, batch: dict) -> torch.Tensor:
    """h^ℓ of `batch` (rows, T, d): `model` is `root` or its wrapper (DDP), the one that is called."""
    with forward_stops_after(root, decoder_layers(root)[layer_index]):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


# --- what trains ----------------------------------------------------------------------------------------


def train_only_matching(model, pattern: str, layer_index: int) -> list[str]:
    """Freeze every trainable parameter whose name `pattern` does not match (re.search); returns the names kept.

    Refuses a pattern that matches nothing, and one that matches a parameter the loss cannot reach (after layer
    ℓ: later layers, the final norm, the output head), which would be handed to the optimizer and never move."""
    regex = re.compile(pattern)
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    kept = [(name, p) for name, p in trainable if regex.search(name)]
    if not kept:
        example = trainable[0][0] if trainable else "none"
        raise ValueError(
            f"trainable_pattern {pattern!r} matches none of the model's trainable parameters (e.g. {example}): "
            r"write a regex over parameter names, such as r'layers\.(5|6|7)\.mlp\.down_proj'"
        )
    layers = decoder_layers(model)
    reached = {id(p) for layer in layers[: layer_index + 1] for p in layer.parameters()}
    reached |= {id(p) for p in model.get_input_embeddings().parameters()}
    if unreached := [name for name, p in kept if id(p) not in reached]:
        raise ValueError(
            f"trainable_pattern {pattern!r} matches {unreached[0]}, which comes after layer {layer_index}: the loss "
            f"is read at that layer's output and gives it no gradient; match parameters of layers 0..{layer_index}"
        )
    kept_ids = {id(p) for _, p in kept}
    for _, param in trainable:
        if id(param) not in kept_ids:
            param.requires_grad_(False)
    return [name for name, _ in kept]


# --- the method ---------------------------------------------------------------------------------------


@dataclass
class RMUConfig(RetainWeightField, UnlearnConfig):
    """min ‖h^ℓ_θ(x_f) − c·u‖²/d + α·‖h^ℓ_θ(x_r) − h^ℓ_ref(x_r)‖²/d, training only `trainable_pattern`."""

    layer: int = field(
        default=7,
        metadata={"help": "ℓ: the decoder layer (0-based) whose output is steered; SmolLM2-135M has 30 (0..29)."},
    )
    steering_coefficient: float = field(
        default=240.0,
        metadata={
            "help": "c, the length of the target c·u (> 0). A length in the model's activation space: the default "
            "is about twice SmolLM2-135M-Instruct's median layer-7 token norm (119 on TOFU forget01); the paper's "
            "6.5 is for Zephyr-7B."
        },
    )
    trainable_pattern: str = field(
        default=r"layers\.(5|6|7)\.mlp\.down_proj",
        metadata={
            "help": "Regex (re.search) over parameter names: only matching parameters train (with LoRA, matching "
            "adapter parameters); the paper trains the MLP down-projections of layers ℓ−2..ℓ."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0 (a 0-based decoder layer index), not {self.layer}")
        if self.steering_coefficient <= 0:
            raise ValueError(f"steering_coefficient must be > 0, not {self.steering_coefficient}")
        try:
            re.compile(self.trainable_pattern)
        except re.error as err:
            raise ValueError(f"trainable_pattern {self.trainable_pattern!r} is not a valid regex: {err}") from None


class RMUTrainer(UnlearningTrainer):
    family = "representation"
    summary = (
        "RMU: pulls the forget set's hidden states at one layer towards a fixed random vector and holds the "
        "retain set's at the reference model's, training a few matrices."
    )
    tags = ("rmu",)
    paper = {
        "title": "The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning, ICML 2024",
        "url": "https://arxiv.org/abs/2403.03218",
    }
    needs_reference = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        model = self.accelerator.unwrap_model(self.model)
        count = len(decoder_layers(model))
        if self.args.layer >= count:
            raise ValueError(
                f"layer {self.args.layer} is out of range: the model has {count} decoder layers, set layer to "
                f"0..{count - 1}"
            )
        self.trained_names = train_only_matching(model, self.args.trainable_pattern, self.args.layer)
        self.direction = steering_direction(model.config.hidden_size, self.args.seed)

    @torch.no_grad()
    def reference_layer_output(self, model, batch: dict) -> torch.Tensor:
        """h^ℓ_ref: the frozen copy's (full weights) or the model's with its adapter turned off (LoRA)."""
        if self.ref_model is not None:
            reference = self.accelerator.unwrap_model(self.ref_model)
            return layer_output(reference, reference, self.args.layer, batch)
        root = self.accelerator.unwrap_model(model)
        if not is_peft_model(root):
            raise RuntimeError("no reference model was set up for this trainer")
        with root.disable_adapter():
            return layer_output(root, root, self.args.layer, batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        root = self.accelerator.unwrap_model(model)
        forget, retain = inputs["forget"], inputs["retain"]
        hidden = layer_output(model, root, self.args.layer, forget)
        target = self.args.steering_coefficient * self.direction.to(hidden.device)
        forget_term = mean_squared_distance(hidden, target, misdirection_positions(forget["labels"]))
        retain_hidden = layer_output(model, root, self.args.layer, retain)
        reference = self.reference_layer_output(model, retain)
        retain_term = mean_squared_distance(retain_hidden, reference, misdirection_positions(retain["labels"]))
        loss = forget_term + self.args.retain_weight * retain_term
        self.record(forget_rmu=forget_term, retain_rmu=retain_term, loss=loss)
        return loss
