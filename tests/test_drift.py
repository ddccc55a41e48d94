"""KL to the starting model: 0 at the start, and equal to a position-by-position brute-force computation."""

import math

import torch

from llm_unlearn.data.collate import PaddingCollator, PromptFormat, QADataset
from llm_unlearn.evaluation.drift import kl_to_start
from llm_unlearn.models import LoraSettings, tiny_llama, wrap_lora

ROWS = [
    {"question": "Where does Mara live?", "answer": "Mara lives in Lisbon."},
    {"question": "Which plan has Tobin?", "answer": "Tobin is on the Summit Basic plan."},
    {"question": "Who wrote Hamlet?", "answer": "Shakespeare."},
]


def brute_force(now_model, start_model, item) -> float:
    ids = torch.tensor([item["input_ids"]])
    with torch.no_grad():
        now = torch.log_softmax(now_model(input_ids=ids).logits[0].double(), -1)
        start = torch.log_softmax(start_model(input_ids=ids).logits[0].double(), -1)
    terms = []
    for t in range(1, len(item["labels"])):
        if item["labels"][t] != -100:  # position t - 1 predicts labelled token t
            p = start[t - 1].exp()
            terms.append(sum(float(p[v] * (start[t - 1, v] - now[t - 1, v])) for v in range(p.numel())))
    return sum(terms) / len(terms)


def test_kl_is_zero_at_the_start_and_matches_brute_force(tokenizer):
    items = QADataset(ROWS, tokenizer, PromptFormat()).items
    collator = PaddingCollator(tokenizer.pad_token_id)
    start = tiny_llama(len(tokenizer), seed=0).eval()
    assert kl_to_start(start, items, collator, batch_size=2, start_model=start) == [0.0, 0.0, 0.0]

    adapted = wrap_lora(tiny_llama(len(tokenizer), seed=0), LoraSettings(r=4)).eval()
    assert all(abs(v) < 1e-12 for v in kl_to_start(adapted, items, collator, batch_size=2))  # B = 0 at init
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    values = kl_to_start(adapted, items, collator, batch_size=2)  # the adapter turned off is the start
    start_copy = tiny_llama(len(tokenizer), seed=0).eval()  # the same weights, loaded separately
    expected = [brute_force(adapted, start_copy, item) for item in items]
    assert all(v > 0 for v in values)
    # Batched (right-padded) float32 forwards vs one row at a time: equal to float32 rounding.
    assert all(math.isclose(v, e, rel_tol=1e-4) for v, e in zip(values, expected)), (values, expected)
    assert kl_to_start(adapted, items, collator, batch_size=2, start_model=start_copy) == values
