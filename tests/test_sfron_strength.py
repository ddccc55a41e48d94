"""SFR-on's forget strength a_t scales the forget loss before masking and clipping; strength 0 is exactly
training without forget steps (AdamW state included)."""

import math

import pytest
import torch
from helpers import make_trainer, paired

from llm_unlearn.data.collate import PairedCollator
from llm_unlearn.methods.saliency import SaliencyMask
from llm_unlearn.methods.sfron import adaptive_weights
from llm_unlearn.models import tiny_llama


def trained_weights(trainer) -> dict[str, torch.Tensor]:
    trainer.train()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_strength_zero_equals_training_with_the_forget_steps_skipped(tokenizer, tmp_path):
    # AdamW with weight decay: a forget step with a zero gradient would still decay the moments, advance the
    # bias-correction count and decay the weights, so only a step that is not taken matches exactly.
    settings = dict(forget_freq=1, max_steps=3, fisher_samples=2, weight_decay=0.01, learning_rate=1e-3)
    zero = make_trainer(
        "sfron", tiny_llama(len(tokenizer), seed=0), tokenizer, tmp_path / "zero", forget_strength=0.0, **settings
    )
    got = trained_weights(zero)
    assert zero.forget_steps == 0

    skipped = make_trainer("sfron", tiny_llama(len(tokenizer), seed=0), tokenizer, tmp_path / "skipped", **settings)
    skipped.forget_step = lambda model, batch: None  # the reference: forget steps removed from the loop
    expected = trained_weights(skipped)
    assert all(torch.equal(got[name], expected[name]) for name in expected)

    # The comparison can tell: with a strength the same run ends elsewhere.
    forgetting = make_trainer(
        "sfron", tiny_llama(len(tokenizer), seed=0), tokenizer, tmp_path / "on", forget_strength=1.0, **settings
    )
    moved = trained_weights(forgetting)
    assert forgetting.forget_steps == 3
    assert any(not torch.equal(moved[name], expected[name]) for name in expected)


@pytest.mark.parametrize(
    "step, strength, a_t",
    [
        (0, 0.25, 0.25),  # a_t = a_0 at t = 0
        (2, 0.8, 0.4),  # a_t = a_0·(1 + cos(π/2))/2 at t = T/2
        (0, 0.9, 0.9),  # above the clip: clipped to it
    ],
)
def test_strength_scales_the_forget_gradient_linearly_before_the_clip(tokenizer, tmp_path, step, strength, a_t):
    model = tiny_llama(len(tokenizer), seed=0)
    batch = PairedCollator(tokenizer.pad_token_id)([paired(tokenizer)[i] for i in range(2)])["forget"]
    params = [p for p in model.parameters() if p.requires_grad]
    # The unscaled weighted-GA gradient g, by plain autograd; the clip is set at 0.6·‖g‖.
    probe = make_trainer("sfron", model, tokenizer, tmp_path / "probe")
    nll = probe.stats(model, batch)[0]
    grads = torch.autograd.grad(-(adaptive_weights(nll, 0.5) * nll).mean(), params)
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
    clip, lr = 0.6 * norm, 0.5

    trainer = make_trainer(
        "sfron",
        model,
        tokenizer,
        tmp_path / "run",
        optim="sgd",
        learning_rate=lr,
        weight_decay=0.0,
        forget_clip=clip,
        forget_strength=strength,
    )
    trainer.saliency = SaliencyMask({n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}, {})
    trainer.create_optimizer()
    trainer.state.max_steps, trainer.state.global_step = 4, step
    before = [p.detach().clone() for p in params]
    trainer.forget_step(model, batch)

    # Scaled before the clip: a_t·g while ‖a_t·g‖ ≤ clip (a learning-rate scale would give a_t·clip/‖g‖·g).
    factor = min(a_t, clip / norm)
    for param, old, grad in zip(params, before, grads):
        torch.testing.assert_close(param.detach() - old, -lr * factor * grad, atol=1e-7, rtol=1e-4)
    logged = trainer._terms
    assert logged["forget_scale"] == [pytest.approx(a_t)]
    assert logged["forget_grad_norm"] == [pytest.approx(a_t * norm, rel=1e-4)]  # the norm before the clip
