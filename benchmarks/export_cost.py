"""Cost of MOX exports: LoRA extrapolation of Llama-2-7B-shaped adapters, and the disk size of full-weight exports.

    OMP_NUM_THREADS=1 python benchmarks/export_cost.py [--out benchmarks/results/cost]

(a) LoRA: random A/B factors of Llama-2-7B's shapes (32 layers, hidden 4096, intermediate 11008; q, k, v, o, gate,
    up, down) at r = 8 and r = 32, keyed as peft saves them; no model. Timed: the α scaling the toolkit applies to
    the saved state (`extrapolate.scale_adapter_state`), its numerical check (`verify_scaled_factors`), and writing
    the adapter weights (safetensors, as `save_adapter_state` does). Medians over several runs. For comparison, the
    previous check, which formed every full-size delta B·A, is timed on one layer.
(b) Full weights: the real SmolLM2-135M (llm_unlearn.models), extrapolated against a perturbed copy (no training):
    one export as the previous code wrote it (fp32, one file) and as now (bf16, sharded by save_pretrained), and a
    5-α run folder written eagerly in fp32 (before) against memorization/ + unlearned/ + 4 lazy α (after).
Results: <out>/exports.json (make_tables.py turns them into a README table).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "cost"

LLAMA2_7B = {"layers": 32, "hidden": 4096, "intermediate": 11008}
RANKS = (8, 32)
ALPHA = 4.0
ALPHAS = (4.0, 0.5, 1.0, 2.0, 8.0)  # the MOX paper's grid, the recipe's primary α first
REPEATS = 5
WRITE_REPEATS = 3
BF16_SHARD = "100MB"  # small enough that SmolLM2's 270 MB in bf16 is sharded; the default 5GB writes one file


def llama2_lora_state(rank: int, seed: int = 0) -> dict:
    """{peft key: tensor} of a rank-`rank` LoRA on every projection of Llama-2-7B, B non-zero (a trained adapter)."""
    import torch

    hidden, inter = LLAMA2_7B["hidden"], LLAMA2_7B["intermediate"]
    shapes = {  # module: (in, out)
        "self_attn.q_proj": (hidden, hidden),
        "self_attn.k_proj": (hidden, hidden),
        "self_attn.v_proj": (hidden, hidden),
        "self_attn.o_proj": (hidden, hidden),
        "mlp.gate_proj": (hidden, inter),
        "mlp.up_proj": (hidden, inter),
        "mlp.down_proj": (inter, hidden),
    }
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for layer in range(LLAMA2_7B["layers"]):
        for module, (fan_in, fan_out) in shapes.items():
            prefix = f"base_model.model.model.layers.{layer}.{module}"
            state[f"{prefix}.lora_A.weight"] = torch.randn(rank, fan_in, generator=generator) / fan_in**0.5
            state[f"{prefix}.lora_B.weight"] = torch.randn(fan_out, rank, generator=generator) * 1e-3
    return state


def timed(fn, repeats: int) -> tuple[float, list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), [round(t, 4) for t in times], result


def full_delta_check_one_layer(state: dict, new: dict) -> None:
    """The previous verification for layer 0: every full-size delta B'·A' against −α·B·A."""
    for key in [k for k in state if ".layers.0." in k and k.endswith("lora_A.weight")]:
        b_key = key.replace("lora_A", "lora_B")
        got = new[b_key].float() @ new[key].float()
        expected = -ALPHA * (state[b_key].float() @ state[key].float())
        float((got - expected).abs().max())


def lora_row(rank: int) -> dict:
    from safetensors.torch import save_file

    from llm_unlearn import extrapolate as xp

    state = llama2_lora_state(rank)
    scale_s, scale_runs, new = timed(lambda: xp.scale_adapter_state(state, ALPHA), REPEATS)
    verify_s, verify_runs, error = timed(lambda: xp.verify_scaled_factors(state, new, ALPHA), REPEATS)
    both_s, _, _ = timed(lambda: xp.verify_scaled_factors(state, xp.scale_adapter_state(state, ALPHA), ALPHA), 3)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "adapter_model.safetensors"
        write_s, write_runs, _ = timed(
            lambda: save_file({k: v.contiguous() for k, v in new.items()}, str(path)), WRITE_REPEATS
        )
        size = path.stat().st_size
    old_check_s, _, _ = timed(lambda: full_delta_check_one_layer(state, new), 1)
    return {
        "rank": rank,
        "modules": len(state) // 2,
        "adapter_params": sum(t.numel() for t in state.values()),
        "scale_s": round(scale_s, 4),
        "scale_runs_s": scale_runs,
        "verify_s": round(verify_s, 4),
        "verify_runs_s": verify_runs,
        "verified_max_abs_error": error,
        "extrapolate_and_verify_s": round(both_s, 4),
        "write_s": round(write_s, 4),
        "write_runs_s": write_runs,
        "adapter_bytes": size,
        "previous_full_delta_check_one_layer_s": round(old_check_s, 3),
        "previous_full_delta_check_32_layers_s_estimate": round(LLAMA2_7B["layers"] * old_check_s, 1),
    }


def lora_timing() -> list[dict]:
    rows = []
    for rank in RANKS:
        rows.append(lora_row(rank))
        print(f"[exports] LoRA r={rank}: {rows[-1]}", flush=True)
    return rows


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def full_weight_sizes(work: Path) -> dict:
    import torch

    from llm_unlearn import extrapolate as xp
    from llm_unlearn.config import ModelConfig
    from llm_unlearn.methods.saved import export_name, extrapolate_saved, materialize_alpha
    from llm_unlearn.models import SMOLLM2_NAME, load_model, load_tokenizer

    tokenizer = load_tokenizer(SMOLLM2_NAME)
    ref = load_model(SMOLLM2_NAME)
    mem = load_model(SMOLLM2_NAME)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a stand-in for the memorization fit: 1e-3 noise on every weight
        for param in mem.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 1e-3)
    memorization = work / "memorization"
    mem.save_pretrained(memorization)
    tokenizer.save_pretrained(memorization)

    previous = xp.WeightsFormat("float32", "50GB")
    now = xp.WeightsFormat("bfloat16", BF16_SHARD)
    start = time.perf_counter()
    fp32 = xp.save_extrapolated_model(ref, mem, ALPHA, work / "fp32", tokenizer, previous)
    fp32_s = time.perf_counter() - start
    start = time.perf_counter()
    bf16 = xp.save_extrapolated_model(ref, mem, ALPHA, work / "bf16", tokenizer, now)
    bf16_s = time.perf_counter() - start
    bf16_shards = sorted(path.name for path in bf16.glob("model*.safetensors"))

    eager = work / "eager_run"  # the previous run folder: every α written in full, fp32
    shutil.copytree(memorization, eager / "memorization")
    for i, alpha in enumerate(ALPHAS):
        xp.save_extrapolated_model(ref, mem, alpha, eager / export_name(i, alpha), tokenizer, previous)
    del ref, mem
    model_cfg = ModelConfig(name_or_path=SMOLLM2_NAME, lora=None)
    runs = {}
    for label, fmt in (("lazy_run_auto", xp.WeightsFormat()), ("lazy_run_bf16", now)):
        run = work / label
        shutil.copytree(memorization, run / "memorization")
        extrapolate_saved(model_cfg, str(run / "memorization"), list(ALPHAS), run, tokenizer, fmt=fmt)
        runs[label] = run
    start = time.perf_counter()
    materialize_alpha(runs["lazy_run_bf16"] / export_name(4, ALPHAS[4]), work / "materialized")
    materialize_s = time.perf_counter() - start
    auto_dtype = xp.dtype_name(xp.checkpoint_dtype(load_model(SMOLLM2_NAME)))
    return {
        "model": f"{SMOLLM2_NAME} (toolkit copy; its config.json declares {auto_dtype})",
        "parameters": sum(p.numel() for p in load_model(str(memorization)).parameters()),
        "export_fp32_one_file_bytes": folder_bytes(fp32),
        "export_fp32_one_file_s": round(fp32_s, 2),
        "export_bf16_sharded_bytes": folder_bytes(bf16),
        "export_bf16_sharded_s": round(bf16_s, 2),
        "export_bf16_max_shard_size": BF16_SHARD,
        "export_bf16_shards": bf16_shards,
        "memorization_bytes": folder_bytes(memorization),
        "alphas": list(ALPHAS),
        "run_eager_fp32_bytes": folder_bytes(eager),
        "run_lazy_auto_bytes": folder_bytes(runs["lazy_run_auto"]),
        "run_lazy_auto_dtype": auto_dtype,
        "run_lazy_bf16_bytes": folder_bytes(runs["lazy_run_bf16"]),
        "lazy_folder_bytes": folder_bytes(runs["lazy_run_bf16"] / export_name(1, ALPHAS[1])),
        "materialize_one_alpha_s": round(materialize_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one, deleted after)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import torch

    from llm_unlearn.utils import atomic_write_json, environment_info

    torch.set_num_threads(1)
    lora = lora_timing()
    work = Path(args.work or tempfile.mkdtemp(prefix="export_cost-"))
    try:
        sizes = full_weight_sizes(work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"[exports] full weights: {sizes}", flush=True)
    result = {
        "description": (
            "MOX export cost: LoRA extrapolation of Llama-2-7B-shaped adapters (no model; median of "
            f"{REPEATS} runs, 1 thread) and the disk size of SmolLM2-135M full-weight exports"
        ),
        "alpha": ALPHA,
        "lora_llama2_7b": {"shape": LLAMA2_7B, "targets": "q, k, v, o, gate, up, down", "ranks": lora},
        "full_weights_smollm2": sizes,
        "environment": {**environment_info(), "torch_threads": torch.get_num_threads()},
    }
    out = Path(args.out) / "exports.json"
    atomic_write_json(out, result)
    print(f"[exports] wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
