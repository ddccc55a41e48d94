"""Shared fixtures. Tests run offline; the real tokenizer comes from the converted SmolLM2 cache."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LLM_UNLEARN_SHARED", REPO.parent / "shared"))
TOFU_DIR = SHARED / "data" / "tofu"


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _threads_for_test(request):
    """Tiny-model tests run faster on one thread (thread start-up dominates tiny matmuls); slow tests on the
    real model keep every core."""
    if "slow" in request.keywords:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tofu_dir() -> Path:
    if not (TOFU_DIR / "full.json").is_file():
        pytest.skip(f"real TOFU data not found at {TOFU_DIR} (../shared beside the repository)")
    return TOFU_DIR


@pytest.fixture(scope="session")
def tokenizer():
    from llm_unlearn.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture()
def tiny_model(tokenizer):
    from llm_unlearn.models import tiny_llama

    return tiny_llama(len(tokenizer), seed=0)


@pytest.fixture(scope="session")
def smollm2():
    from llm_unlearn.models import load_model

    model = load_model("smollm2-135m-instruct")
    model.eval()
    return model


@pytest.fixture()
def fake_hub(monkeypatch):
    """A local fake Hub for pushes (tests/hub_server.py); see tests/test_hub.py's docstring for why the offline
    constant is turned off for the test."""
    import huggingface_hub
    from hub_server import FakeHub, loopback_only_client
    from huggingface_hub import constants
    from huggingface_hub.utils._http import default_client_factory

    with FakeHub() as hub:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # see the module docstring
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        huggingface_hub.set_client_factory(loopback_only_client)
        try:
            yield hub
        finally:
            huggingface_hub.set_client_factory(default_client_factory)
