"""Answer-token log-probabilities, per-sample NLL, the retain KL and the NPO term that the methods' losses are
built from."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.collate import IGNORE_INDEX
from ..logits import first_needed, forward_logits  # noqa: F401 (the methods' forward)


def answer_token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position log p(label) for shifted labels, and the mask of scored positions (labels != -100).

    log p = logit[label] - logsumexp(logits): no full-vocabulary log_softmax copy is made."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe = targets.masked_fill(~mask, 0)
    logp = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return logp * mask, mask


def sequence_stats(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (mean answer NLL, summed answer log-prob, answer token count)."""
    logp, mask = answer_token_logprobs(logits, labels)
    count = mask.sum(-1)
    summed = logp.sum(-1)
    if (count == 0).any():
        raise ValueError("a sample has no answer tokens to score (answer cut by max_length?)")
    return -summed / count, summed, count


def token_kl(ref_logits: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p_theta) averaged over the positions in `mask` (shifted like the labels) of each sample,
    then over samples. Per-sample means (like the NLL) make a DDP step over b + b rows equal to one
    process's step over the same 2b rows.

    Only the masked positions are gathered (not the padding), and the model side needs no log_softmax copy:
    with r, l the reference's and the model's logits and p_ref summing to 1,
    KL = sum p_ref * (r - l) + logsumexp(l) - logsumexp(r), exactly 0 when l = r."""
    mask = mask.bool()
    counts = mask.sum(-1)
    chosen = logits[:, :-1][mask].float()  # (masked positions in the batch, vocab)
    with torch.no_grad():
        ref = ref_logits[:, :-1][mask].float()
        ref_p = torch.softmax(ref, dim=-1)
        ref_lse = torch.logsumexp(ref, dim=-1)
    per_token = (ref_p * (ref - chosen)).sum(-1) + torch.logsumexp(chosen, dim=-1) - ref_lse
    rows = torch.repeat_interleave(torch.arange(mask.shape[0], device=mask.device), counts)
    per_sample = torch.zeros(mask.shape[0], dtype=per_token.dtype, device=per_token.device).index_add(
        0, rows, per_token
    )
    return (per_sample / counts.clamp_min(1).to(per_sample.dtype)).mean()


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """−(2/β)·mean log σ(−β·(logp_θ − logp_ref)); minimizing it lowers the forget likelihood below θ_ref."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp)).mean()
