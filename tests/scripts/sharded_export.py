"""Train the tiny Llama two steps and export it, unsharded (1 process) or sharded by torch's FSDP2 (2 processes).

Launched by tests/test_sharded.py: `run_all(..., world_size=1)` in the test's own process (every row in one
batch), and this script under `accelerate launch` on 2 gloo CPU processes, where `fully_shard` shards every
decoder layer and the root (DTensor parameters; each process takes half the rows). accelerate on CPU ignores
an FSDP plugin and its DDP refuses DTensor models, so the two optimizer steps are taken here with the trainer's
own loss and optimizer (SGD: the update is lr·gradient, so FSDP's gradient averaging is compared too). Exports
go through the trainer's export(run_dir, model_source), as in `llm-unlearn unlearn`. Under 2 processes rank 0 also
writes <out>/checks.json: that the trainer saw the sharding, and what it refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

ROWS = 4  # forget rows = retain rows = one global batch
# run folder -> (method, LoRA, MOX export_mode)
CASES = {
    "mox": ("mox", False, "auto"),
    "mox_lora": ("mox", True, "auto"),
    "mox_lora_merged": ("mox", True, "merged"),
    "task_vector": ("task_vector", False, "auto"),
    "ga": ("ga", False, "auto"),
}


def shard(model, layers) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (2,))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def refusals(model, ref_model, tokenizer, out: Path) -> dict[str, str]:
    """The error each sharded-unsafe configuration raises on the sharded model (every process raises)."""
    from helpers import make_trainer

    found = {}
    for name, method, settings in (
        ("mox_momentum", "mox", {"momentum": True}),
        ("sfron", "sfron", {}),
        ("ungrad", "ungrad", {}),
    ):
        try:
            make_trainer(method, model, tokenizer, out / f"refused-{name}", ref_model=ref_model, **settings)
            found[name] = ""
        except ValueError as err:
            found[name] = str(err)
    return found


def run_all(base: str, out: Path, world_size: int) -> None:
    import torch
    from helpers import FORGET, RETAIN, make_trainer, paired

    from llm_unlearn.config import ModelConfig
    from llm_unlearn.data.collate import PairedCollator
    from llm_unlearn.models import LoraSettings, load_model, load_tokenizer, wrap_lora

    torch.set_num_threads(1)
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    dataset = paired(tokenizer, forget=FORGET[:ROWS], retain=RETAIN[:ROWS])
    checks = {}
    for name, (method, lora, export_mode) in CASES.items():
        torch.manual_seed(0)  # LoRA's A: the same on every process before sharding
        model = load_model(base)
        if lora:
            model = wrap_lora(model, LoraSettings())
        ref_model = load_model(base) if not lora and method in ("mox", "task_vector") else None
        extra = {"alpha": 2.0, "alphas": [0.5], "export_mode": export_mode} if method == "mox" else {}
        if method == "task_vector":
            extra = {"alpha": 2.0}
        if world_size > 1:
            shard(model, (model.base_model.model if lora else model).model.layers)
        trainer = make_trainer(
            method,
            model,
            tokenizer,
            out / name / "checkpoints",
            ref_model=ref_model,
            dataset=dataset,
            optim="sgd",
            learning_rate=0.1,
            weight_decay=0.0,
            **extra,
        )
        rank, per_process = trainer.accelerator.process_index, ROWS // world_size
        rows = range(rank * per_process, (rank + 1) * per_process)
        batch = PairedCollator(tokenizer.pad_token_id)([dataset[i] for i in rows])
        trainer.create_optimizer()
        for _ in range(2):
            trainer.compute_loss(model, batch).backward()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
        if world_size > 1:
            local = sum(p.to_local().numel() for p in model.parameters())
            checks[name] = {"sharded": trainer.shards_parameters(), "local_fraction": local / model.num_parameters()}
            if method == "mox":
                try:
                    trainer.export_unlearned(str(out / name / "direct"))
                    checks[name]["direct_export"] = ""
                except ValueError as err:
                    checks[name]["direct_export"] = str(err)
        model_cfg = ModelConfig(name_or_path=base, lora=LoraSettings() if lora else None)
        exports = trainer.export(out / name, model_source=model_cfg)
        if trainer.accelerator.is_main_process:
            kinds = {folder: info["kind"] for folder, info in exports.items()}
            (out / name / "exports.json").write_text(json.dumps(kinds, sort_keys=True))
        trainer.accelerator.wait_for_everyone()
    if world_size > 1:
        checks["refused"] = refusals(model, load_model(base), tokenizer, out)
        if int(os.environ.get("RANK", "0")) == 0:
            (out / "checks.json").write_text(json.dumps(checks, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="the saved tiny Llama every case starts from")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_all(args.base, out, world_size=2)
    if int(os.environ.get("RANK", "0")) == 0:
        (out / "done").write_text("ok\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # gloo sometimes aborts at interpreter exit after the work is done


if __name__ == "__main__":
    main()
