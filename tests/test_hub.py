"""Hub push and model cards, tested against a local fake Hub (tests/hub_server.py) on 127.0.0.1.

Offline mode: conftest sets HF_HUB_OFFLINE=1, which huggingface_hub reads once at import into
`huggingface_hub.constants.HF_HUB_OFFLINE`; while it is true, huggingface_hub refuses *every* request, a local
endpoint included. The `fake_hub` fixture therefore sets that constant to False for one test (monkeypatch
restores it), points `constants.ENDPOINT` at the fake too, and installs an HTTP client that raises on any host
but the loopback, so nothing can reach huggingface.co even by mistake.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shlex
import types
from pathlib import Path

import pytest
import torch
import yaml
from hub_server import FakeHub

from llm_unlearn.hub import HubPushError, InvalidRunFolderError, inspect_run_folder, push_run
from llm_unlearn.model_card import RunInfoError, build_model_card, load_run_info
from llm_unlearn.models import tiny_llama, wrap_lora

REPO_ID = "alice/tiny-unlearned"
TOKEN = "hf_test_token"
SPLITS = {
    "forget01": {"rows": 40, "sha256": "a1" * 32},
    "retain99": {"rows": 3960, "sha256": "b2" * 32},
}
METRICS = {"forget_quality": 0.0123456789, "model_utility": 0.5987654321, "forget_truth_ratio": 0.61}
# Files a training run leaves beside its final model that must never be pushed.
DECOYS = (
    "checkpoint-5/adapter_model.safetensors",
    "checkpoint-5/optimizer.pt",
    "optimizer.pt",
    "scheduler.pt",
    "training_args.bin",
    "trainer_state.json",
    "eval/per_sample.json",
)


def run_info(method: str = "mox", base_model: str = "smollm2-135m-instruct") -> dict:
    return {
        "method": method,
        "hyperparameters": {"learning_rate": 1e-05, "num_epochs": 10, "lora": {"r": 8, "lora_alpha": 16}},
        "alpha": 4.0,
        "eta": 0.675,
        "base_model": base_model,
        "base_model_revision": None,
        "data": {"dataset": "tofu", "forget_split": "forget01", "splits": copy.deepcopy(SPLITS)},  # tests edit it
        "seed": 1234,
        "versions": {"torch": "2.13.0", "transformers": "5.24.0", "peft": "0.21.2"},
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "toolkit_version": "0.1.0",
    }


def write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def adapted_model(tiny_model):
    """LoRA over the tiny model with random B, so the adapter changes the logits (B = 0 at init would not)."""
    model = wrap_lora(tiny_model)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model.eval()


@pytest.fixture()
def adapter(tiny_model):
    return adapted_model(tiny_model)


@pytest.fixture()
def run_dir(tmp_path, tokenizer, adapter):
    """A run folder as the unlearning recipe leaves it: adapter, tokenizer, run files, and decoys."""
    folder = tmp_path / "run"
    model = adapter
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_json(folder / "run_info.json", run_info())
    write_json(folder / "eval" / "summary.json", {"suite": "tofu", "metrics": METRICS, "options": {"stemming": True}})
    for name in DECOYS:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"not for the Hub: " + name.encode())
    return folder


def test_push_uploads_model_files_and_card_only(run_dir, fake_hub):
    url = push_run(run_dir, REPO_ID, private=True, token=TOKEN, endpoint=fake_hub.url)

    assert url.startswith(f"{fake_hub.url}/{REPO_ID}/commit/")
    assert fake_hub.routes_seen() == ["create_repo", "validate_yaml", "preupload", "commit"]
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in fake_hub.requests)
    assert fake_hub.repos[REPO_ID].visibility == "private"
    received = fake_hub.files(REPO_ID)
    expected = set(snapshot(run_dir)) - set(DECOYS)
    assert set(received) == expected
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "README.md"} <= expected
    assert {"run_info.json", "eval/summary.json"} <= expected
    for name, content in received.items():
        assert content == (run_dir / name).read_bytes(), name
    assert received["README.md"].decode() == build_model_card(run_dir, repo_id=REPO_ID)
    assert fake_hub.repos[REPO_ID].commits[0]["summary"] == "Upload mox unlearning run (llm_unlearn 0.1.0)"


def test_pushed_adapter_loads_back_with_identical_logits(run_dir, adapter, fake_hub, tokenizer, tmp_path):
    from peft import PeftModel

    push_run(run_dir, REPO_ID, endpoint=fake_hub.url)
    downloaded = fake_hub.write_files(REPO_ID, tmp_path / "downloaded")

    base = tiny_llama(len(tokenizer), seed=0).eval()
    input_ids = torch.tensor([tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad():
        base_logits = base(input_ids).logits
        reloaded = PeftModel.from_pretrained(base, str(downloaded)).eval()
        reloaded_logits = reloaded(input_ids).logits
        original_logits = adapter(input_ids).logits
    assert not torch.allclose(original_logits, base_logits, atol=1e-3)  # the adapter matters, so this can fail
    assert torch.equal(reloaded_logits, original_logits)


def test_model_card_carries_run_metadata_metrics_and_hashes(run_dir):
    card = build_model_card(run_dir, repo_id=REPO_ID)

    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    metadata = yaml.safe_load(front)
    assert metadata["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert metadata["library_name"] == "peft"
    assert metadata["license"] == "apache-2.0"
    assert metadata["tags"] == ["llm_unlearn", "unlearning", "mox"]
    for name, value in METRICS.items():
        assert f"| {name} | {value!r} |" in body
    for name, split in SPLITS.items():
        assert f"| {name} | {split['rows']} | {split['sha256']} |" in body
    assert "- Dataset: `tofu`" in body and "- forget_split: forget01" in body
    assert "| learning_rate | 1e-05 |" in body and "| lora.r | 8 |" in body
    assert "α (extrapolation strength): 4.0" in body and "η (momentum rate): 0.675" in body
    assert "Suite: `tofu`" in body and "`stemming` = true" in body
    assert f'PeftModel.from_pretrained(base, "{REPO_ID}")' in body
    assert "dequantized from a 4-bit GGUF" in body and "SmolLM2-135M-Instruct.Q4_1.gguf" in body
    assert "MOX (memorize, then extrapolate)" in body
    assert "Seed: 1234" in body and "0123456789abcdef0123456789abcdef01234567" in body
    assert "| transformers | 5.24.0 |" in body and "llm_unlearn version: 0.1.0" in body
    assert "No evaluation was run" not in body


def test_card_for_full_weights_without_evaluation(tmp_path):
    folder = tmp_path / "full"
    write_json(folder / "config.json", {"model_type": "llama"})
    (folder / "model.safetensors").write_bytes(b"weights")
    write_json(folder / "run_info.json", run_info(method="npo", base_model="some-org/base-model"))

    card = build_model_card(folder, repo_id=REPO_ID)

    metadata = yaml.safe_load(card.split("---\n")[1])
    assert metadata["library_name"] == "transformers"
    assert metadata["base_model"] == "some-org/base-model"
    assert "license" not in metadata  # unknown for this base: not invented
    assert metadata["tags"] == ["llm_unlearn", "unlearning", "npo"]
    assert f'AutoModelForCausalLM.from_pretrained("{REPO_ID}")' in card
    assert "PeftModel" not in card
    assert "No evaluation was run for this model" in card
    assert "GGUF" not in card
    assert "NPO:" in card


def test_card_for_the_original_smollm2_release_has_no_gguf_note(tmp_path):
    write_json(tmp_path / "run_info.json", run_info(base_model="HuggingFaceTB/SmolLM2-135M-Instruct"))
    write_json(tmp_path / "adapter_config.json", {})

    card = build_model_card(tmp_path, repo_id=REPO_ID)

    metadata = yaml.safe_load(card.split("---\n")[1])
    assert metadata["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and metadata["license"] == "apache-2.0"
    assert 'base = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")' in card
    assert "GGUF" not in card  # the Hub release is not the dequantized conversion


def test_card_leaves_local_base_out_of_metadata(tmp_path):
    folder = tmp_path / "run"
    (tmp_path / "target").mkdir()
    write_json(folder / "run_info.json", run_info(base_model=str(tmp_path / "target")))
    write_json(folder / "adapter_config.json", {})

    metadata = yaml.safe_load(build_model_card(folder).split("---\n")[1])

    assert "base_model" not in metadata  # a local path is not a Hub id; the Hub would reject it


def card_folder(folder: Path, info: dict, metrics: dict | None) -> Path:
    """A run folder with only what a card reads: run_info.json, an adapter marker and optionally a summary."""
    write_json(folder / "run_info.json", info)
    write_json(folder / "adapter_config.json", {})
    if metrics is not None:
        write_json(folder / "eval" / "summary.json", {"suite": "tofu", "metrics": metrics, "options": {}})
    return folder


def test_card_metadata_round_trips_through_huggingface_hub(tmp_path):
    from huggingface_hub import ModelCard

    metrics = {**METRICS, "privleak": None, "forget_rougeL_recall": float("nan"), "retain_prob": 1}
    card_text = build_model_card(card_folder(tmp_path, run_info(), metrics), repo_id=REPO_ID)

    card = ModelCard(card_text)  # strict: a malformed model-index raises here
    data = card.data
    assert str(card) == card_text  # the card is exactly as huggingface_hub writes it
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and data.license == "apache-2.0"
    assert data.tags == ["llm_unlearn", "unlearning", "mox"] and data.library_name == "peft"
    assert data.pipeline_tag == "text-generation" and data.datasets == ["locuslab/TOFU"]
    assert data.model_name == "tiny-unlearned"
    # Every finite number of summary.json, in its order; null and NaN are left out.
    expected = [*METRICS.items(), ("retain_prob", 1)]
    assert [(r.metric_type, r.metric_value) for r in data.eval_results] == expected
    for result in data.eval_results:
        assert (result.task_type, result.dataset_type) == ("text-generation", "locuslab/TOFU")
        assert (result.dataset_name, result.dataset_config) == ("TOFU forget01", "forget01")
    assert "| privleak | n/a |" in card_text and "| forget_rougeL_recall | nan |" in card_text  # still in the body


def test_card_model_index_passes_the_hubs_schema_without_network(tmp_path):
    from huggingface_hub.utils import validate_repo_id

    metrics = {**METRICS, "privleak": None}
    card_text = build_model_card(card_folder(tmp_path, run_info(), metrics), repo_id=REPO_ID)

    metadata = yaml.safe_load(card_text.split("---\n")[1])
    validate_repo_id(metadata["base_model"])
    validate_repo_id(metadata["datasets"][0])
    assert metadata["model-index"] == [
        {
            "name": "tiny-unlearned",
            "results": [
                {
                    "task": {"type": "text-generation"},
                    "dataset": {"name": "TOFU forget01", "type": "locuslab/TOFU", "config": "forget01"},
                    "metrics": [{"type": name, "value": value} for name, value in METRICS.items()],
                }
            ],
        }
    ]


def test_card_of_another_dataset_names_it_and_lists_no_hub_dataset(tmp_path):
    from huggingface_hub import ModelCard

    info = run_info()
    info["data"] = {"dataset": "synthetic", "splits": copy.deepcopy(SPLITS)}
    data = ModelCard(build_model_card(card_folder(tmp_path, info, {"forget_quality": 0.5}))).data

    assert "datasets" not in data.to_dict()
    assert data.model_name == tmp_path.name  # without a repo id: the run folder's name
    [result] = data.eval_results
    assert (result.dataset_type, result.dataset_name, result.dataset_config) == ("synthetic", "synthetic", None)
    assert (result.metric_type, result.metric_value) == ("forget_quality", 0.5)


def test_card_without_numeric_metrics_has_no_model_index(tmp_path):
    from huggingface_hub import ModelCard

    card_text = build_model_card(card_folder(tmp_path, run_info(), {"forget_quality": None}), repo_id=REPO_ID)

    assert "model-index" not in yaml.safe_load(card_text.split("---\n")[1])
    assert ModelCard(card_text).data.eval_results is None
    assert "| forget_quality | n/a |" in card_text and "model-index` metadata" not in card_text


@pytest.mark.parametrize("failing_routes", [None, {"commit"}], ids=["all-routes", "commit-only"])
def test_failing_server_raises_retry_command_and_keeps_folder(run_dir, fake_hub, monkeypatch, failing_routes):
    # huggingface_hub retries a failed commit with 1-8 s back-off; skip the waiting, keep the retries.
    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http, "time", types.SimpleNamespace(sleep=lambda seconds: None))
    before = snapshot(run_dir)
    fake_hub.fail(500, routes=failing_routes)

    with pytest.raises(HubPushError) as caught:
        push_run(run_dir, REPO_ID, endpoint=fake_hub.url)

    message = str(caught.value)
    assert f"Retry with: llm-unlearn push {shlex.quote(str(run_dir))} --repo-id {REPO_ID}" in message
    assert f"The local folder {run_dir} is intact" in message
    assert "500" in message
    after = snapshot(run_dir)
    assert set(after) == set(before) | {"README.md"}  # nothing removed, no temp files left behind

    def without_card(files):
        return {name: digest for name, digest in files.items() if name != "README.md"}

    assert without_card(after) == without_card(before)
    if failing_routes == {"commit"}:
        assert "commit" in fake_hub.routes_seen() and fake_hub.files(REPO_ID) == {}


def test_fake_hub_fixture_refuses_any_host_but_the_loopback(fake_hub):
    from huggingface_hub.utils import get_session

    # `.invalid` is a reserved name that resolves nowhere; the guard raises before any lookup is tried.
    with pytest.raises(RuntimeError, match="only the local fake Hub"):
        get_session().get("http://hub.invalid/api/models")


def test_unreachable_endpoint_raises_push_error(run_dir, fake_hub):
    with FakeHub() as closed:
        endpoint = closed.url  # stopped on leaving the block: connections to it are refused

    with pytest.raises(HubPushError, match="Could not reach"):
        push_run(run_dir, REPO_ID, endpoint=endpoint)


def test_offline_mode_refuses_before_any_request(run_dir, fake_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    with pytest.raises(HubPushError, match="HF_HUB_OFFLINE") as caught:
        push_run(run_dir, REPO_ID, endpoint=fake_hub.url)

    assert "Retry with: HF_HUB_OFFLINE=0 llm-unlearn push" in str(caught.value)
    assert fake_hub.requests == []


def test_folder_without_weights_is_refused_before_any_request(tmp_path, fake_hub, tokenizer):
    folder = tmp_path / "run"
    tokenizer.save_pretrained(folder)
    write_json(folder / "config.json", {"model_type": "llama"})
    write_json(folder / "run_info.json", run_info())
    (folder / "checkpoint-3").mkdir()
    (folder / "checkpoint-3" / "adapter_model.safetensors").write_bytes(b"checkpoint weights")

    with pytest.raises(InvalidRunFolderError, match="holds no model weights") as caught:
        push_run(folder, REPO_ID, endpoint=fake_hub.url)

    assert "checkpoint-3" in str(caught.value)
    assert fake_hub.requests == []
    assert not (folder / "README.md").exists()


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"adapter_config.json": "{}", "run_info.json": "{}"},
            "no adapter weights: expected adapter_model.safetensors",
        ),
        ({"model.safetensors": "x", "run_info.json": "{}"}, "no config.json"),
        ({"adapter_config.json": "{}", "adapter_model.safetensors": "x"}, "has no run_info.json"),
        (
            {
                "config.json": "{}",
                "model.safetensors.index.json": '{"weight_map": {"a": "model-00001-of-00002.safetensors"}}',
            },
            "missing from",
        ),
    ],
    ids=["adapter-without-weights", "weights-without-config", "no-run-info", "missing-shard"],
)
def test_inspect_run_folder_says_what_is_missing(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(InvalidRunFolderError, match=expected):
        inspect_run_folder(tmp_path)


def test_missing_run_info_points_at_the_one_a_level_up(tmp_path):
    write_json(tmp_path / "run_info.json", run_info())
    model_dir = tmp_path / "unlearned"
    write_json(model_dir / "adapter_config.json", {})
    (model_dir / "adapter_model.safetensors").write_bytes(b"x")

    with pytest.raises(InvalidRunFolderError, match="exists one level up"):
        inspect_run_folder(model_dir)


def test_sharded_full_weights_are_listed_for_push(tmp_path):
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    write_json(tmp_path / "model.safetensors.index.json", {"weight_map": {"a": shards[0], "b": shards[1]}})
    for name in [*shards, "config.json", "run_info.json", "optimizer.pt"]:
        (tmp_path / name).write_text("x")

    folder = inspect_run_folder(tmp_path)

    assert not folder.is_adapter
    assert set(folder.files) == {"model.safetensors.index.json", *shards, "config.json", "run_info.json"}


def test_run_info_errors_name_file_and_key(tmp_path):
    info = run_info()
    del info["seed"]
    write_json(tmp_path / "run_info.json", info)
    with pytest.raises(RunInfoError, match=r"run_info.json: missing key 'seed' \(expected an integer\)"):
        load_run_info(tmp_path)

    info = run_info()
    info["data"]["splits"]["forget01"]["rows"] = "forty"
    write_json(tmp_path / "run_info.json", info)
    with pytest.raises(RunInfoError, match=r"'data.splits.forget01.rows' should be an integer, got 'forty'"):
        load_run_info(tmp_path)

    (tmp_path / "run_info.json").write_text('{\n  "method": "mox",\n}')
    with pytest.raises(RunInfoError, match="run_info.json: line 3, column 1"):
        load_run_info(tmp_path)


def test_card_finds_the_evaluate_stage_default_folder_beside_the_model(tmp_path):
    """`llm-unlearn evaluate` writes <run>/eval beside <run>/unlearned; pushing <run>/unlearned must still show
    those metrics, and an evaluation of another model folder must not be picked up."""
    folder = tmp_path / "run" / "unlearned"
    write_json(folder / "config.json", {"model_type": "llama"})
    (folder / "model.safetensors").write_bytes(b"weights")
    write_json(folder / "run_info.json", run_info())
    beside = tmp_path / "run" / "eval"
    write_json(beside / "summary.json", {"suite": "tofu", "metrics": METRICS, "options": {}})
    write_json(beside / "run_info.json", {"stage": "evaluate", "model_path": str(tmp_path / "run" / "other")})
    assert "No evaluation was run for this model" in build_model_card(folder, repo_id=REPO_ID)

    write_json(beside / "run_info.json", {"stage": "evaluate", "model_path": str(folder)})
    card = build_model_card(folder, repo_id=REPO_ID)
    assert "No evaluation was run" not in card
    for name, value in METRICS.items():
        assert f"| {name} | {value!r} |" in card


def test_push_of_a_lazy_alpha_materializes_it_first(tmp_path, tokenizer, fake_hub):
    """A full-weight MOX α written lazily is materialized in place (bf16, sharded), then pushed like any model."""
    from transformers import AutoModelForCausalLM

    from llm_unlearn.config import ModelConfig
    from llm_unlearn.extrapolate import WeightsFormat
    from llm_unlearn.methods.saved import extrapolate_saved

    ref, mem = tiny_llama(len(tokenizer), seed=0), tiny_llama(len(tokenizer), seed=1)
    ref.save_pretrained(tmp_path / "ref")
    mem.save_pretrained(tmp_path / "run" / "memorization")
    tokenizer.save_pretrained(tmp_path / "run" / "memorization")  # as the trainer saves it
    cfg = ModelConfig(name_or_path=str(tmp_path / "ref"), lora=None)
    fmt = WeightsFormat("bfloat16", "100KB")
    extrapolate_saved(cfg, str(tmp_path / "run" / "memorization"), [1.0, 2.0], tmp_path / "run", tokenizer, fmt=fmt)
    lazy = tmp_path / "run" / "alpha_2"
    write_json(lazy / "run_info.json", {**run_info(base_model=str(tmp_path / "ref")), "alpha": 2.0})

    push_run(lazy, REPO_ID, token=TOKEN, endpoint=fake_hub.url)

    received = fake_hub.files(REPO_ID)
    index = json.loads(received["model.safetensors.index.json"])
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and shards <= set(received)
    assert {"config.json", "run_info.json", "README.md", "tokenizer.json"} <= set(received)
    downloaded = fake_hub.write_files(REPO_ID, tmp_path / "downloaded")
    pushed = AutoModelForCausalLM.from_pretrained(downloaded, dtype="auto").state_dict()
    for key, r in ref.state_dict().items():  # θ_ref + α(θ_ref − θ_mem) in fp32, then bf16
        expected = (r + 2.0 * (r - mem.state_dict()[key])).to(torch.bfloat16)
        assert torch.equal(pushed[key], expected), key
