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
    process's step over the same 2b rows."""
    ref_logp = torch.log_softmax(ref_logits[:, :-1].float(), dim=-1)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    per_token = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    mask = mask.to(per_token.dtype)
    per_sample = (per_token * mask).sum(-1) / mask.sum(-1).clamp_min(1)
    return per_sample.mean()


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """−(2/β)·mean log σ(−β·(logp_θ − logp_ref)); minimizing it lowers the forget likelihood below θ_ref."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp)).mean()
