"""What a benchmark's `--model` names: a model directory, a config.json, or a config shipped with vlmserve
(`vlmserve/models/configs/<name>/`); `--hf-overrides` (vLLM's spelling) deep-merges JSON into that config.

A config changed by overrides, or given as a lone file, is written into a temporary directory that links the
source directory's other files (weights, tokenizer, preprocessor config); the source is never modified.
"""

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from vlmserve.bench.roofline import text_decoder_weight_bytes

SHIPPED_CONFIGS = Path(__file__).resolve().parent.parent / "models" / "configs"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


@dataclass
class ModelSource:
    path: Path  # the directory the engine loads
    label: str  # what the user named
    config: dict  # its config.json, overrides merged
    has_weights: bool
    overrides: dict = field(default_factory=dict)
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    def __enter__(self) -> "ModelSource":
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def shipped_configs() -> list[str]:
    """Names of the configs shipped with vlmserve: every directory under models/configs holding a config.json."""
    return sorted(p.name for p in SHIPPED_CONFIGS.iterdir() if (p / "config.json").is_file())


def resolve_model(model: str, *, load_format: str = "auto", hf_overrides: str | dict | None = None) -> ModelSource:
    """The directory to load for `model`; a config without weights needs load_format 'dummy'."""
    directory, config_file = _locate(model)
    has_weights = any((directory / name).is_file() for name in WEIGHT_FILES) if directory else False
    if not has_weights and load_format != "dummy":
        raise ValueError(f"--model {model} is a config without weights ({' or '.join(WEIGHT_FILES)}); pass "
                         "--load-format dummy to benchmark random weights of its shapes")
    config = _read_json(config_file)
    overrides = parse_overrides(hf_overrides)
    if directory is not None and not overrides:
        return ModelSource(directory, model, config, has_weights)
    tmp = tempfile.TemporaryDirectory(prefix="vlmserve-bench-model-")
    path = Path(tmp.name)
    config = deep_merge(config, overrides)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    for item in directory.iterdir() if directory else ():
        if item.name != "config.json":
            (path / item.name).symlink_to(item.resolve())
    return ModelSource(path, model, config, has_weights, overrides, tmp)


def require_mllama(source: ModelSource, what: str) -> None:
    """The byte counts, synthetic tiles and transformers peer are Llama 3.2 Vision's (model_type 'mllama')."""
    model_type = source.config.get("model_type")
    if model_type != "mllama":
        raise ValueError(f"{what} supports Llama 3.2 Vision configs (model_type 'mllama'); {source.label} is "
                         f"{model_type!r}")


def parse_overrides(overrides: str | dict | None) -> dict:
    if overrides is None or isinstance(overrides, dict):
        return overrides or {}
    try:
        value = json.loads(overrides)
    except json.JSONDecodeError as err:
        raise ValueError(f"--hf-overrides is not valid JSON ({err}): {overrides!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--hf-overrides must be a JSON object, got {overrides!r}")
    return value


def deep_merge(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` merged in: nested objects key by key, anything else (lists too) replaced."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _locate(model: str) -> tuple[Path | None, Path]:
    """(model directory or None for a lone config file, its config.json)."""
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"--model {model}: the directory has no config.json")
        return path, path / "config.json"
    if path.is_file():
        return (path.parent, path) if path.name == "config.json" else (None, path)
    if model in shipped_configs():
        return SHIPPED_CONFIGS / model, SHIPPED_CONFIGS / model / "config.json"
    raise ValueError(f"--model {model} is neither a directory, a config file nor a shipped config; shipped: "
                     f"{', '.join(shipped_configs())}")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def describe(source: ModelSource, engine, load_format: str, transformers_compat: bool) -> dict:
    """What a benchmark ran: the model as named, its size, and how the engine holds it."""
    model = engine.runner.model
    return {"model": source.label, "hf_overrides": source.overrides, "load_format": load_format,
            "dtype": str(engine.runner.dtype).removeprefix("torch."), "device": str(engine.device),
            "transformers_compat": transformers_compat, "parameters": sum(p.numel() for p in model.parameters()),
            "text_decoder_weight_bytes": text_decoder_weight_bytes(model), "kv_cache_blocks": engine.runner.num_blocks}
