"""STEPS training steps of any registered method on the tiny LoRA model, under 1 or 2 processes.

Launched by tests/test_methods_distributed.py with plain python (1 process, per-device batch 2b) and with
`accelerate launch --config_file recipes/accelerate_configs/cpu_2proc.yaml` (2 processes, batch b). The
dataset is exactly one global batch, so both runs see the same rows whatever the sampler order. LoRA starts
from a random, non-zero B (init_lora_weights=False), so that every trainable parameter, lora_A included, gets a
gradient from the first step. Rank 0 writes the trainable parameters before and after the steps and the logged
terms to <out>/<method>.pt; every rank writes its own parameters to <out>/<method>-rank<r>.pt (all ranks must
end with the same weights).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

ROWS = 4  # forget rows = retain rows = one global batch
STEPS = 3
# On the random tiny model p(y) ≈ 1/vocab. WGA's and SatImp's token weights p^β would all but erase their forget
# term next to the retain term: a small β keeps it. CE-U (no retain term) has a gradient proportional to p(y),
# ~1e-5 here, so that at lr 0.1 weight decay alone would move the weights: a large lr without decay makes its
# own steps the movement that the comparison checks (SGD's update is lr·gradient: it scales the step only).
METHOD_SETUP = {"wga": {"beta": 0.01}, "satimp": {"beta1": 0.01}, "ce_u": {"learning_rate": 3e3, "weight_decay": 0.0}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--per-device-batch", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    from helpers import FORGET, RETAIN, make_trainer, paired

    from llm_unlearn.models import LoraSettings, load_tokenizer, tiny_llama, wrap_lora

    torch.set_num_threads(1)
    assert args.per_device_batch * args.world_size == ROWS, "the global batch must be the whole dataset"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    for method in args.methods:
        model = wrap_lora(tiny_llama(len(tokenizer), seed=0), LoraSettings(extra={"init_lora_weights": False}))
        initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        trainer = make_trainer(
            method,
            model,
            tokenizer,
            out / f"run-{method}",
            dataset=paired(tokenizer, forget=FORGET[:ROWS], retain=RETAIN[:ROWS]),
            per_device_train_batch_size=args.per_device_batch,
            max_steps=STEPS,
            optim="sgd",  # the update is exactly lr·direction, so the comparison sees its magnitude too
            **{"learning_rate": 0.1, **METHOD_SETUP.get(method, {})},
        )
        assert trainer.accelerator.num_processes == args.world_size, (
            f"expected {args.world_size} processes, got {trainer.accelerator.num_processes}"
        )
        trainer.train()
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        params = {n: p.detach().clone() for n, p in unwrapped.named_parameters() if p.requires_grad}
        torch.save(params, out / f"{method}-rank{trainer.accelerator.process_index}.pt")
        if trainer.accelerator.is_main_process:
            logged = {k: v for row in trainer.state.log_history for k, v in row.items() if isinstance(v, float)}
            torch.save({"initial": initial, "params": params, "logged": logged}, out / f"{method}.pt")
        trainer.accelerator.wait_for_everyone()
    if int(os.environ.get("RANK", "0")) == 0:
        (out / "done").write_text("ok\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # gloo sometimes aborts at interpreter exit after the work is done: skip the exit handlers


if __name__ == "__main__":
    main()
