"""MOX over LoRA beyond plain linear adapters: embedding LoRA on tied embeddings, `lora_bias`, `modules_to_save`,
initialisations that rewrite the base weight, DoRA, and momentum refreshed per epoch.

Expected weights come from peft's own `merge_and_unload` on deep copies and the hand formula
(1+α)·W_ref − α·W_mem, never from llm_unlearn.extrapolate.
"""

import copy
import warnings

import pytest
import torch
from helpers import make_trainer
from transformers import AutoModelForCausalLM, TrainerCallback

from llm_unlearn import extrapolate as xp
from llm_unlearn.config import ConfigError, ModelConfig, build_dataclass
from llm_unlearn.models import LoraSettings, LoraSettingsError, tiny_llama, wrap_lora

# name: (tiny_llama overrides, LoraSettings fields)
CASES = {
    "tied_embedding": ({}, {"target_modules": ["embed_tokens", "q_proj", "down_proj"]}),
    "lora_bias": ({"attention_bias": True}, {"target_modules": ["q_proj", "v_proj"], "extra": {"lora_bias": True}}),
    "modules_to_save": ({}, {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}),
}
ALPHA = 2.0


@pytest.fixture(autouse=True)
def _quiet_peft():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns about tied embeddings and lora_bias, which these tests want
        yield


def base_model(tokenizer, case):
    return tiny_llama(len(tokenizer), seed=0, **CASES[case][0])


def lora_model(tokenizer, case):
    return wrap_lora(base_model(tokenizer, case), LoraSettings(**CASES[case][1]))


def randomize(model, seed):
    """Non-zero B everywhere (and every other trained tensor); a modules_to_save copy becomes original + noise."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            noise = torch.randn(param.shape, generator=gen) * 0.05
            if ".modules_to_save.default." in name:
                param.copy_(model.get_parameter(name.replace("modules_to_save.default", "original_module")) + noise)
            else:
                param.copy_(noise)


def merged_weights(peft_model) -> dict[str, torch.Tensor]:
    """peft's merge of a deep copy, lm_head untied first: peft adds an embedding delta to the shared tensor,
    though the adapter model's lm_head never sees it."""
    clone = copy.deepcopy(peft_model)
    head = clone.get_base_model().lm_head
    if isinstance(head, torch.nn.Linear):
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
    return {k: v.detach().float() for k, v in clone.merge_and_unload().state_dict().items()}


def hand_extrapolated(reference: dict, memorized: dict, alpha: float) -> dict[str, torch.Tensor]:
    return {k: (1 + alpha) * reference[k].float() - alpha * memorized[k] for k in reference}


def assert_close(actual: dict, expected: dict, atol: float = 1e-5):
    assert set(expected) <= set(actual)
    for key, value in expected.items():
        assert torch.allclose(actual[key].float(), value, atol=atol), (key, float((actual[key] - value).abs().max()))


def loaded_state(folder) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in AutoModelForCausalLM.from_pretrained(folder).state_dict().items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_export_equals_hand_formula_over_peft_merge(case, tokenizer, tmp_path):
    peft = lora_model(tokenizer, case)
    randomize(peft, seed=1)
    reference = base_model(tokenizer, case).state_dict()
    expected = hand_extrapolated(reference, merged_weights(peft), ALPHA)
    state = xp.merged_extrapolated_state(peft, ALPHA)
    assert_close(state, expected)
    xp.save_model_state(peft, state, tmp_path / "merged")
    assert_close(loaded_state(tmp_path / "merged"), expected)
    if case == "tied_embedding":  # lm_head stays at θ_ref while the embedding moves: saved untied
        assert torch.equal(state["lm_head.weight"], reference["lm_head.weight"])
        assert not torch.allclose(state["model.embed_tokens.weight"], reference["model.embed_tokens.weight"])
        assert AutoModelForCausalLM.from_pretrained(tmp_path / "merged").config.tie_word_embeddings is False


@pytest.mark.parametrize("case", sorted(CASES))
def test_extrapolated_adapter_loads_as_the_hand_formula(case, tokenizer, tmp_path):
    from peft import PeftModel

    peft = lora_model(tokenizer, case)
    randomize(peft, seed=2)
    reference = base_model(tokenizer, case).state_dict()
    expected = hand_extrapolated(reference, merged_weights(peft), ALPHA)
    xp.save_extrapolated_adapter(peft, ALPHA, tmp_path / "adapter")  # B <- -αB, verified inside
    loaded = PeftModel.from_pretrained(base_model(tokenizer, case), tmp_path / "adapter")
    assert_close(merged_weights(loaded), expected)
    # The adapter on the base and the merged export compute the same logits.
    xp.save_model_state(peft, xp.merged_extrapolated_state(peft, ALPHA), tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    ids = torch.tensor([[1, 5, 9, 200, 31, 7]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4)


def test_lora_bias_without_a_base_bias_refuses_merging_but_exports_the_adapter(tokenizer, tmp_path):
    peft = wrap_lora(tiny_llama(len(tokenizer)), LoraSettings(target_modules=["down_proj"], extra={"lora_bias": True}))
    randomize(peft, seed=3)
    with pytest.raises(xp.ExtrapolationError, match="lora_bias but no bias in the base layer"):
        xp.merged_extrapolated_state(peft, ALPHA)
    with pytest.raises(xp.ExtrapolationError, match="lora_bias but no bias in the base layer"):
        make_trainer("mox", peft, tokenizer, tmp_path, export_mode="merged")
    state = xp.extrapolate_adapter_state(peft, ALPHA)
    bias_keys = [k for k in state if k.endswith("lora_B.bias")]
    assert len(bias_keys) == 2
    for key in bias_keys:
        trained = peft.get_parameter(key.replace("lora_B.bias", "lora_B.default.bias"))
        assert torch.allclose(state[key], -ALPHA * trained.detach())


@pytest.mark.parametrize("case", sorted(CASES))
def test_lora_momentum_equals_hand_ema_of_hand_extrapolated_models(case, tokenizer, tmp_path):
    """Momentum extrapolates every trained tensor (embedding LoRA, lora_bias, modules_to_save) and EMAs it; both
    exports (merged weights, and an SVD adapter whose rank covers the EMA's) load as that EMA."""
    from peft import PeftModel

    peft = lora_model(tokenizer, case)
    eta = 0.675
    trainer = make_trainer("mox", peft, tokenizer, tmp_path, momentum=True, momentum_eta=eta, svd_rank=40)
    reference = base_model(tokenizer, case).state_dict()
    ema = None
    for k in range(3):
        randomize(peft, seed=10 + k)
        theta_for = hand_extrapolated(reference, merged_weights(peft), ALPHA)
        ema = theta_for if ema is None else {n: eta * theta_for[n] + (1 - eta) * ema[n] for n in theta_for}
        trainer.momentum.refresh(step=k + 1)
    trainer.momentum.export(str(tmp_path / "merged"), ALPHA)
    assert_close(loaded_state(tmp_path / "merged"), ema)
    info = trainer.momentum.export_svd_adapter(peft, str(tmp_path / "svd"), ALPHA)
    assert info["svd_relative_error"] < 1e-5  # three rank-8 deltas fit in rank 40
    svd = PeftModel.from_pretrained(base_model(tokenizer, case), tmp_path / "svd")
    assert_close(merged_weights(svd), ema, atol=1e-4)


def test_dora_is_refused_for_momentum_and_by_the_svd_export(tokenizer, tmp_path):
    dora = wrap_lora(tiny_llama(len(tokenizer)), LoraSettings(use_dora=True))
    with pytest.raises(xp.ExtrapolationError, match="DoRA"):
        make_trainer("mox", dora, tokenizer, tmp_path, momentum=True, momentum_export="svd")
    plain = wrap_lora(tiny_llama(len(tokenizer)), LoraSettings())
    trainer = make_trainer("mox", plain, tokenizer, tmp_path, momentum=True, momentum_export="svd")
    trainer.momentum.refresh(step=1)
    with pytest.raises(xp.ExtrapolationError, match="DoRA"):
        trainer.momentum.export_svd_adapter(dora, str(tmp_path / "svd"), ALPHA)
    assert not (tmp_path / "svd").exists()


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora", "corda", "loftq", "lora_ga", "mica"])
def test_initialisations_that_rewrite_the_base_are_refused(init, tokenizer):
    with pytest.raises(LoraSettingsError, match="rewrites the base weights.*use one of True, False, 'gaussian'"):
        LoraSettings(extra={"init_lora_weights": init})
    with pytest.raises(ConfigError, match="rewrites the base weights"):
        build_dataclass(ModelConfig, {"lora": {"extra": {"init_lora_weights": init}}}, "model")
    settings = LoraSettings()
    settings.extra["init_lora_weights"] = init  # set after construction: wrap_lora checks again
    with pytest.raises(LoraSettingsError, match="rewrites the base weights"):
        wrap_lora(tiny_llama(len(tokenizer)), settings)


def test_gaussian_initialisation_is_accepted_and_keeps_the_base(tokenizer):
    peft = wrap_lora(tiny_llama(len(tokenizer)), LoraSettings(extra={"init_lora_weights": "gaussian"}))
    reference = tiny_llama(len(tokenizer)).state_dict()
    assert_close(merged_weights(peft), {k: v.float() for k, v in reference.items()}, atol=0)
    assert xp.verify_lora_extrapolation(peft, xp.extrapolate_adapter_state(peft, ALPHA), ALPHA) == 0.0


def test_ensure_weight_tying_is_refused_with_a_way_out(tokenizer, tmp_path):
    tied = LoraSettings(target_modules=["embed_tokens"], extra={"ensure_weight_tying": True})
    with pytest.raises(xp.ExtrapolationError, match="leave ensure_weight_tying off"):
        make_trainer("mox", wrap_lora(tiny_llama(len(tokenizer)), tied), tokenizer, tmp_path)


# --- momentum refreshed per epoch ------------------------------------------------------------------------


class RecordExtrapolatedAtEpochEnd(TrainerCallback):
    """θ_for of the model at every epoch end, from peft's merge and the hand formula."""

    def __init__(self, model, reference, alpha):
        self.model, self.reference, self.alpha, self.snapshots = model, reference, alpha, []

    def on_epoch_end(self, args, state, control, **kwargs):
        self.snapshots.append(hand_extrapolated(self.reference, merged_weights(self.model), self.alpha))


def test_per_epoch_momentum_equals_hand_ema_of_epoch_end_models(tokenizer, tmp_path):
    """4 forget rows at batch 2: 2 steps per epoch; 2.5 epochs end at steps 2, 4 and (partial) 5."""
    peft = wrap_lora(tiny_llama(len(tokenizer)), LoraSettings())
    eta = 0.675
    trainer = make_trainer(
        "mox",
        peft,
        tokenizer,
        tmp_path,
        momentum=True,
        momentum_eta=eta,
        momentum_refresh="epoch",
        num_train_epochs=2.5,
        learning_rate=5e-3,
        alpha=ALPHA,
    )
    recorder = RecordExtrapolatedAtEpochEnd(peft, tiny_llama(len(tokenizer)).state_dict(), ALPHA)
    trainer.add_callback(recorder)
    trainer.train()
    assert trainer.state.global_step == 5 and len(recorder.snapshots) == 3
    assert trainer.momentum.refreshes == 3
    ema = recorder.snapshots[0]
    for theta_for in recorder.snapshots[1:]:
        ema = {n: eta * theta_for[n] + (1 - eta) * ema[n] for n in theta_for}
    info = trainer.export_unlearned(str(tmp_path / "unlearned"))
    assert info["momentum_refresh"] == "epoch" and info["refreshes"] == 3
    assert_close(loaded_state(tmp_path / "unlearned"), ema)


@pytest.mark.parametrize("save_steps", [2, 3])  # a checkpoint at an epoch's last step, and one mid-epoch
def test_per_epoch_momentum_resumes_to_the_uninterrupted_buffer(save_steps, tokenizer, tmp_path):
    settings = dict(
        momentum=True,
        momentum_refresh="epoch",
        num_train_epochs=3,
        learning_rate=5e-3,
        save_strategy="steps",
        save_steps=save_steps,
    )
    full = make_trainer("mox", wrap_lora(tiny_llama(len(tokenizer)), LoraSettings()), tokenizer, tmp_path, **settings)
    full.train()
    expected = {k: v.clone() for k, v in full.momentum.buffer.items()}
    assert full.momentum.refreshes == 3
    resumed = make_trainer(
        "mox", wrap_lora(tiny_llama(len(tokenizer)), LoraSettings()), tokenizer, tmp_path, **settings
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{save_steps}"))
    assert resumed.momentum.refreshes == 3
    assert_close(resumed.momentum.buffer, expected, atol=1e-6)


def test_momentum_refresh_options_are_checked(tmp_path):
    from llm_unlearn.methods import get_method

    config = get_method("mox").config
    with pytest.raises(ValueError, match="momentum_refresh must be one of"):
        config(output_dir=str(tmp_path), use_cpu=True, momentum_refresh="epochs")
    with pytest.raises(ValueError, match="refresh_steps=2 is only used with momentum_refresh 'steps'"):
        config(output_dir=str(tmp_path), use_cpu=True, momentum_refresh="epoch", refresh_steps=2)
