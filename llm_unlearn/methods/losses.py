"""Answer-token log-probabilities, per-sample NLL, the retain KL and the NPO term that the methods' losses are
built from, and the per-token pieces several of them share (a cross-entropy to a fixed target distribution,
token-weighted log-probabilities)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.collate import IGNORE_INDEX
from ..logits import Window, forward_logits, needed_window  # noqa: F401 (the methods' forward)


def answer_token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position log p(label) for shifted labels, and the mask of scored positions (labels != -100).

    log p = logit[label] - logsumexp(logits): no full-vocabulary log_softmax copy is made."""
    logits = logits[:, :-1].float()
    safe, mask = shifted_answer_labels(labels)
    logp = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return logp * mask, mask


def sequence_stats(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (mean answer NLL, summed answer log-prob, answer token count)."""
    logp, mask = answer_token_logprobs(logits, labels)
    return -per_sample_means(logp, mask), logp.sum(-1), mask.sum(-1)


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


def per_sample_means(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sample, the mean of per-position `values` over its answer positions `mask`. Their mean over samples
    is the NLL's weighting: a DDP step over b + b rows equals one process's step over the same 2b rows."""
    count = mask.sum(-1)
    if (count == 0).any():
        raise ValueError("a sample has no answer tokens to score (answer cut by max_length?)")
    return (values * mask).sum(-1) / count


def soft_target_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Per position, H(q, p_θ) = −Σ_v q_v log p_θ(v) with q = softmax(target_logits) taken as a constant.

    Written as logsumexp(z) − Σ_v q_v z_v (q sums to 1), so no log-softmax copy of the logits is made."""
    logits = logits.float()
    target = torch.softmax(target_logits.detach().float(), dim=-1)
    return torch.logsumexp(logits, dim=-1) - (target * logits).sum(-1)


def shifted_answer_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The labels that positions 0 .. T-2 predict, with 0 in place of −100 (safe to index with), and their mask."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    return targets.masked_fill(~mask, 0), mask


def weighted_answer_logprob(logits: torch.Tensor, labels: torch.Tensor, weight_of) -> tuple[torch.Tensor, torch.Tensor]:
    """mean_i mean_t w_t·log p_θ(y_t) over answer tokens with w_t = weight_of(p_θ(y_t)) taken as a constant
    (the token-reweighted ascent of WGA and SatImp: minimizing it lowers the answer likelihood), and the
    per-sample mean NLL from the same log-probabilities."""
    logp, mask = answer_token_logprobs(logits, labels)
    weight = weight_of(logp.detach().exp().clamp(0.0, 1.0))  # p ≤ 1 also where rounding gives log p > 0
    return per_sample_means(weight * logp, mask).mean(), per_sample_means(-logp, mask)
