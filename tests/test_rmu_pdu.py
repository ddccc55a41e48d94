"""RMU and PDU on tiny models: losses against longhand computations (hidden states from output_hidden_states,
not RMU's hook), what RMU trains and where its forward stops, PDU's λ against the projected dual step over
steps and across a checkpoint resume, and the refusals of bad settings."""

import json
import re

import pytest
import torch
from helpers import make_trainer, resume_watching_lambda
from test_methods import fixed_batch, hand_nll, lora_model, perturb_lora

from llm_unlearn.methods import get_method
from llm_unlearn.methods.pdu import PrimalDualCallback
from llm_unlearn.models import tiny_llama

# --- RMU ------------------------------------------------------------------------------------------------------


def hand_positions(labels: torch.Tensor) -> list[list[int]]:
    """Per row: positions t whose token is labelled or whose next token is."""
    rows = []
    for b in range(labels.shape[0]):
        width = labels.shape[1]
        rows.append([t for t in range(width) if labels[b, t] != -100 or (t + 1 < width and labels[b, t + 1] != -100)])
    return rows


def hand_mean_squared_distance(hidden: torch.Tensor, target, labels: torch.Tensor) -> torch.Tensor:
    """mean over rows of (mean over that row's positions of Σ_k (h_k − target_k)² / d), with loops."""
    per_row = []
    for b, positions in enumerate(hand_positions(labels)):
        terms = []
        for t in positions:
            goal = target if target.dim() == 1 else target[b, t]
            diff = hidden[b, t] - goal
            terms.append(sum(float(x) ** 2 for x in diff) / hidden.shape[-1])
        per_row.append(sum(terms) / len(terms))
    return torch.tensor(sum(per_row) / len(per_row))


def hidden_at(model, batch, layer):
    """Output of decoder layer `layer`: hidden_states[layer + 1] (the last entry is after the final norm)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    return out.hidden_states[layer + 1]


def lora_model_with_layers(tokenizer, num_layers):
    from llm_unlearn.models import LoraSettings, wrap_lora

    return wrap_lora(tiny_llama(len(tokenizer), seed=0, num_layers=num_layers), LoraSettings())


def test_rmu_loss_matches_hand_computation(tokenizer, tmp_path):
    model = lora_model_with_layers(tokenizer, 4)
    perturb_lora(model)  # θ ≠ θ_ref, so the retain term is not zero
    c, alpha, layer, seed = 3.0, 7.0, 2, 5
    trainer = make_trainer(
        "rmu",
        model,
        tokenizer,
        tmp_path,
        layer=layer,
        steering_coefficient=c,
        retain_weight=alpha,
        trainable_pattern=r"layers\.[0-2]\.",
        seed=seed,
    )
    batch = fixed_batch(tokenizer)
    loss = trainer.compute_loss(model, batch).detach()

    u = torch.rand(model.config.hidden_size, generator=torch.Generator().manual_seed(seed))
    u = u / torch.sqrt((u * u).sum())
    with torch.no_grad():
        forget_hidden = hidden_at(model, batch["forget"], layer)
        retain_hidden = hidden_at(model, batch["retain"], layer)
        with model.disable_adapter():
            reference = hidden_at(model, batch["retain"], layer)
    forget = hand_mean_squared_distance(forget_hidden, c * u, batch["forget"]["labels"])
    retain = hand_mean_squared_distance(retain_hidden, reference, batch["retain"]["labels"])
    assert float(retain) > 1e-6
    assert float(loss) == pytest.approx(float(forget + alpha * retain), rel=1e-4)
    logged = {name: values[-1] for name, values in trainer._terms.items()}
    assert logged["forget_rmu"] == pytest.approx(float(forget), rel=1e-4)
    assert logged["retain_rmu"] == pytest.approx(float(retain), rel=1e-4)


def test_rmu_positions_cover_text_windows_and_the_answer_with_the_token_before_it():
    ignore = -100
    qa = torch.tensor([[ignore, ignore, ignore, 11, 12, 13, ignore]])  # prompt, answer + end-of-turn, pad
    text = torch.tensor([[ignore, 21, 22, 23, ignore, ignore]])  # a text window: every token but the first
    assert hand_positions(qa) == [[2, 3, 4, 5]]
    assert hand_positions(text) == [[0, 1, 2, 3]]  # every attended token
    from llm_unlearn.methods.rmu import misdirection_positions

    assert misdirection_positions(qa).nonzero()[:, 1].tolist() == [2, 3, 4, 5]
    assert misdirection_positions(text).nonzero()[:, 1].tolist() == [0, 1, 2, 3]


def test_rmu_direction_is_a_seeded_unit_vector_in_the_positive_orthant(tokenizer, tmp_path):
    directions = []
    for seed in (0, 0, 1):
        trainer = make_trainer("rmu", lora_model(tokenizer), tokenizer, tmp_path / str(len(directions)), seed=seed)
        directions.append(trainer.direction)
    assert torch.equal(directions[0], directions[1])  # re-derived identically (a resumed run, another process)
    assert not torch.equal(directions[0], directions[2])
    assert float(directions[0].norm()) == pytest.approx(1.0, abs=1e-6) and bool((directions[0] >= 0).all())


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_rmu_retain_term_is_zero_at_init(mode, tokenizer, tmp_path):
    vocab = len(tokenizer)
    model = lora_model(tokenizer) if mode == "lora" else tiny_llama(vocab, seed=0)  # LoRA: B = 0, θ = θ_ref
    ref_model = tiny_llama(vocab, seed=0) if mode == "full" else None
    trainer = make_trainer("rmu", model, tokenizer, tmp_path, ref_model=ref_model)
    trainer.compute_loss(model, fixed_batch(tokenizer))
    assert trainer._terms["retain_rmu"] == [0.0]
    assert trainer._terms["forget_rmu"][0] > 0


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_rmu_trains_exactly_the_parameters_its_pattern_names(mode, tokenizer, tmp_path):
    vocab = len(tokenizer)
    model = lora_model(tokenizer) if mode == "lora" else tiny_llama(vocab, seed=0)
    ref_model = tiny_llama(vocab, seed=0) if mode == "full" else None
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    was_trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    expected = {name for name in was_trainable if ".layers.1.mlp.down_proj." in name}
    assert expected and expected != was_trainable
    trainer = make_trainer(
        "rmu",
        model,
        tokenizer,
        tmp_path,
        ref_model=ref_model,
        layer=1,
        trainable_pattern=r"layers\.1\.mlp\.down_proj",
        max_steps=3,
        learning_rate=1e-2,
        weight_decay=0.0,
    )
    assert {name for name, param in model.named_parameters() if param.requires_grad} == expected
    assert set(trainer.trained_names) == expected
    trainer.train()
    after = dict(model.named_parameters())
    moved = {name for name in before if not torch.equal(after[name].detach(), before[name])}
    assert moved == expected  # LoRA's B = 0 at the start: lora_A moves from the second step on
    forget_terms = [row["forget_rmu"] for row in trainer.state.log_history if "forget_rmu" in row]
    assert len(forget_terms) == 3 and forget_terms[-1] < forget_terms[0]


def test_rmu_forward_stops_after_its_layer_and_matches_output_hidden_states(tokenizer, tmp_path):
    model = tiny_llama(len(tokenizer), seed=0, num_layers=4)
    make_trainer("rmu", model, tokenizer, tmp_path, ref_model=tiny_llama(len(tokenizer), seed=0, num_layers=4), layer=1)
    calls = []
    model.model.layers[2].register_forward_hook(lambda *args: calls.append("layer 2"))
    model.lm_head.register_forward_hook(lambda *args: calls.append("head"))
    batch = fixed_batch(tokenizer)["forget"]
    from llm_unlearn.methods.rmu import layer_output

    hidden = layer_output(model, model, 1, batch)
    assert calls == []  # nothing after layer 1 ran
    assert "forward" not in vars(model)  # the forward is the class's again
    assert torch.equal(hidden, hidden_at(model, batch, 1))
    assert calls == ["layer 2", "head"]  # an ordinary forward runs everything
    calls.clear()
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert calls == ["layer 2", "head"]  # and the hook is gone


def test_rmu_refuses_bad_settings_before_training(tokenizer, tmp_path):
    vocab = len(tokenizer)
    config = get_method("rmu").config
    with pytest.raises(ValueError, match="layer must be >= 0"):
        config(output_dir=str(tmp_path), use_cpu=True, layer=-1)
    with pytest.raises(ValueError, match="steering_coefficient must be > 0"):
        config(output_dir=str(tmp_path), use_cpu=True, steering_coefficient=0.0)
    with pytest.raises(ValueError, match="is not a valid regex"):
        config(output_dir=str(tmp_path), use_cpu=True, trainable_pattern=r"layers\.(5")
    with pytest.raises(
        ValueError, match=re.escape("layer 2 is out of range: the model has 2 decoder layers, set layer to 0..1")
    ):
        make_trainer("rmu", lora_model(tokenizer), tokenizer, tmp_path, layer=2)
    with pytest.raises(ValueError, match="trainable_pattern 'attention' matches none of the model's trainable"):
        make_trainer("rmu", lora_model(tokenizer), tokenizer, tmp_path, trainable_pattern="attention")
    with pytest.raises(ValueError, match="which comes after layer 0"):
        make_trainer("rmu", lora_model(tokenizer), tokenizer, tmp_path, layer=0, trainable_pattern=r"layers\.1\.")
    with pytest.raises(ValueError, match="model.norm.weight, which comes after layer 1"):
        make_trainer(
            "rmu", tiny_llama(vocab), tokenizer, tmp_path, ref_model=tiny_llama(vocab), trainable_pattern="norm"
        )
    with pytest.raises(ValueError, match="needs the reference model"):
        make_trainer("rmu", tiny_llama(vocab), tokenizer, tmp_path)


# --- PDU ------------------------------------------------------------------------------------------------------


def hand_margin(model, batch) -> torch.Tensor:
    """Per row: the mean over positions t that predict a labelled token of (max_v z_tv − mean_v z_tv)²; then the
    mean over rows."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    per_row = []
    for b in range(logits.shape[0]):
        terms = []
        for t in range(1, logits.shape[1]):
            if int(batch["labels"][b, t]) != -100:
                z = logits[b, t - 1].float()
                terms.append((z.max() - z.sum() / z.numel()) ** 2)
        per_row.append(torch.stack(terms).mean())
    return torch.stack(per_row).mean()


def test_pdu_loss_matches_hand_computation(tokenizer, tmp_path):
    model = lora_model(tokenizer)
    perturb_lora(model)
    lam, eps = 2.5, 0.75
    trainer = make_trainer("pdu", model, tokenizer, tmp_path, lambda_init=lam, retain_bound=eps)
    batch = fixed_batch(tokenizer)
    loss = trainer.compute_loss(model, batch).detach()
    with torch.no_grad():
        margin = hand_margin(model, batch["forget"])
        retain_nll = hand_nll(model, batch["retain"])[0].mean()
        forget_nll = hand_nll(model, batch["forget"])[0].mean()
    assert float(loss) == pytest.approx(float(margin + lam * (retain_nll - eps)), rel=1e-4)
    logged = {name: values[-1] for name, values in trainer._terms.items()}
    assert logged["forget_margin"] == pytest.approx(float(margin), rel=1e-4)
    assert logged["forget_nll"] == pytest.approx(float(forget_nll), rel=1e-4)
    assert logged["retain_nll"] == pytest.approx(float(retain_nll), rel=1e-4)


def logged_rows(trainer, key):
    return [row for row in trainer.state.log_history if key in row]


@pytest.mark.parametrize(
    ("bound", "accumulation"),
    [(9.0, 1), (9.0, 2), (20.0, 1)],  # the tiny model's retain NLL is ≈ 10.8: above ε (λ rises), below (λ → 0)
)
def test_pdu_lambda_follows_the_projected_dual_step(bound, accumulation, tokenizer, tmp_path):
    lam0, eta, warmup = 0.4, 0.05, 1
    trainer = make_trainer(
        "pdu",
        lora_model(tokenizer),
        tokenizer,
        tmp_path,
        per_device_train_batch_size=1 if accumulation == 2 else 2,
        gradient_accumulation_steps=accumulation,
        max_steps=4,
        lambda_init=lam0,
        dual_step=eta,
        retain_bound=bound,
        dual_warmup=warmup,
    )
    trainer.train()
    rows = logged_rows(trainer, "pdu_lambda")
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    expected, lam = [], lam0
    for step, row in enumerate(rows, start=1):
        # The logged retain NLL is the step's: the mean over its accumulation window.
        assert row["pdu_constraint"] == pytest.approx(row["retain_nll"] - bound, abs=1e-5)
        if step > warmup:
            lam = max(0.0, lam + eta * (row["retain_nll"] - bound))
        expected.append(lam)
    assert [row["pdu_lambda"] for row in rows] == pytest.approx(expected, abs=1e-5)
    assert trainer.dual.updates == 3 and trainer.dual.lam == pytest.approx(expected[-1], abs=1e-5)
    if bound > 10.8:
        assert expected[1:] == [0.0, 0.0, 0.0]
    else:
        assert expected[0] < expected[1] < expected[2] < expected[3]


def test_pdu_warmup_as_a_fraction_of_the_run(tokenizer, tmp_path):
    trainer = make_trainer("pdu", lora_model(tokenizer), tokenizer, tmp_path, max_steps=4, dual_warmup=0.5)
    trainer.train()
    lambdas = [row["pdu_lambda"] for row in logged_rows(trainer, "pdu_lambda")]
    assert lambdas[:2] == [100.0, 100.0] and lambdas[2] != 100.0  # ceil(0.5 · 4) = 2 steps at λ0
    assert trainer.dual.updates == 2


def test_pdu_lambda_is_restored_on_resume(tokenizer, tmp_path):
    settings = dict(
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        lambda_init=0.3,
        dual_step=0.05,
        retain_bound=9.0,
        dual_warmup=0,
    )
    full = make_trainer("pdu", lora_model(tokenizer), tokenizer, tmp_path / "full", **settings)
    full.train()
    lambdas = [row["pdu_lambda"] for row in logged_rows(full, "pdu_lambda")]
    assert len(lambdas) == 4 and lambdas[1] != pytest.approx(0.3)

    saved = json.loads((tmp_path / "full" / "checkpoint-2" / PrimalDualCallback.FILE).read_text())
    assert saved == {"lambda": pytest.approx(lambdas[1], abs=1e-6), "updates": 2}

    resumed = make_trainer("pdu", lora_model(tokenizer), tokenizer, tmp_path / "full", **settings)
    seen = resume_watching_lambda(resumed, str(tmp_path / "full" / "checkpoint-2"))
    assert seen[0] == pytest.approx(lambdas[1], abs=1e-6)  # λ at the start of step 3 is the saved one
    assert resumed.dual.lam == pytest.approx(full.dual.lam, rel=1e-4, abs=1e-6)
    assert resumed.dual.updates == full.dual.updates == 4

    (tmp_path / "full" / "checkpoint-2" / PrimalDualCallback.FILE).unlink()
    again = make_trainer("pdu", lora_model(tokenizer), tokenizer, tmp_path / "full", **settings)
    with pytest.raises(FileNotFoundError, match="resuming pdu needs λ from .*pdu_dual.json"):
        again.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_pdu_steps_move_the_weights_and_flatten_the_forget_logits(mode, tokenizer, tmp_path):
    vocab = len(tokenizer)
    model = lora_model(tokenizer) if mode == "lora" else tiny_llama(vocab, seed=0)
    trainable = {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}
    # λ0 = 0 and η = 0: the forget loss alone, so that its fall is what the steps did.
    trainer = make_trainer(
        "pdu", model, tokenizer, tmp_path, max_steps=3, learning_rate=1e-2, lambda_init=0.0, dual_step=0.0
    )
    trainer.train()
    after = dict(model.named_parameters())
    assert any(not torch.equal(after[name].detach(), value) for name, value in trainable.items())
    margins = [row["forget_margin"] for row in logged_rows(trainer, "forget_margin")]
    assert len(margins) == 3 and margins[-1] < margins[0]
    assert trainer.ref_model is None  # retain NLL: no reference needed


def test_pdu_refuses_bad_settings(tmp_path):
    config = get_method("pdu").config
    with pytest.raises(ValueError, match="lambda_init must be >= 0"):
        config(output_dir=str(tmp_path), use_cpu=True, lambda_init=-1.0)
    with pytest.raises(ValueError, match="dual_step must be >= 0"):
        config(output_dir=str(tmp_path), use_cpu=True, dual_step=-0.1)
    with pytest.raises(ValueError, match="dual_warmup must be a fraction of the run in \\[0, 1\\) or a whole number"):
        config(output_dir=str(tmp_path), use_cpu=True, dual_warmup=2.5)
    assert get_method("pdu").trainer.wants_reference(config(output_dir=str(tmp_path), use_cpu=True, retain_loss="kl"))
