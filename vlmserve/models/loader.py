"""Load a Hugging Face model directory into our model: safetensors shard by shard, straight into parameters.

The model is built on the meta device and materialised once, so peak host memory is the model plus the
tensor being copied. Under tensor parallelism the model has this rank's shapes and every checkpoint tensor is read
through a safetensors slice, cut as the destination parameter's layer declares (vlmserve/distributed/sharding.py):
a rank reads only its own bytes. Every check (files present, names known, shapes equal, nothing missing) either
passes or raises with the offending name: a half-loaded model is never returned.
"""

import json
import math
import os
import re
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from vlmserve.distributed.parallel_state import SINGLE, TensorParallel
from vlmserve.distributed.sharding import (
    ShardSpec,
    parameter_specs,
    shard_shape,
    shard_tensor,
    validate_tp,
)
from vlmserve.families import resolve_model_family
from vlmserve.layers.embed_head import VocabParallelEmbedding
from vlmserve.models.config_common import ConfigError

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}
LOAD_FORMATS = ("auto", "safetensors", "dummy")

# transformers 5.x in-memory names -> the Hub names our modules carry.
_NAME_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("model.vision_model.", "vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
)

# Llama 4 checkpoints converted for offline quantization store each routed expert unfused, as [out, in] Linear
# weights; they fill slices of the fused x @ W parameters.
_UNFUSED_EXPERT = re.compile(
    r"^(?P<experts>.+\.feed_forward\.experts)\.(?P<expert>\d+)\.(?P<proj>gate|up|down)_proj\.weight$")
_FUSED_EXPERT = {"gate": "gate_up_proj", "up": "gate_up_proj", "down": "down_proj"}


class WeightLoadError(RuntimeError):
    """A checkpoint whose files or tensors do not match the model its config describes."""


@dataclass
class LoadedModel:
    model: nn.Module
    config: object
    dtype: torch.dtype


def read_config(model_dir: str | os.PathLike) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"no config.json in model directory {str(model_dir)!r}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None


def resolve_dtype(dtype: str | torch.dtype, config_dtype: str | None) -> torch.dtype:
    """'auto' takes the checkpoint's dtype (bfloat16 when it names none)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = (config_dtype or "bfloat16") if dtype == "auto" else dtype
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use 'auto', 'bfloat16', 'float16' or 'float32'")
    return DTYPES[name]


def hub_name(name: str) -> str:
    for prefix, replacement in _NAME_PREFIXES:
        if name.startswith(prefix):
            return replacement + name[len(prefix):]
    return name


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a directory, from its index when sharded; missing shards raise by name."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (model_dir / "model.safetensors").is_file():
        names = ["model.safetensors"]
    else:
        raise WeightLoadError(f"no model.safetensors or model.safetensors.index.json in {str(model_dir)!r}")
    missing = [n for n in names if not (model_dir / n).is_file()]
    if missing:
        raise WeightLoadError(f"checkpoint shard {missing[0]!r} listed in the index is missing from {model_dir}")
    return [model_dir / n for n in names]


@dataclass(frozen=True)
class _Sharding:
    """What cuts a checkpoint tensor down to this rank's part: the split each parameter's layer declares, the rank."""

    specs: dict[str, ShardSpec]
    tp: TensorParallel


def load_weights(model: nn.Module, files: list[Path], tp: TensorParallel = SINGLE) -> None:
    params = dict(model.named_parameters())
    parts: dict[str, set[str]] = {}  # parameter -> the parts of it loaded so far ("" = the whole)
    sharding = _Sharding(parameter_specs(model), tp)
    for path in files:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as shard:
                for key in shard.keys():
                    _copy_tensor(params, parts, hub_name(key), shard.get_slice(key), sharding)
        except WeightLoadError:
            raise
        except Exception as err:  # safetensors raises plain errors for corrupt or truncated files
            raise WeightLoadError(f"cannot read checkpoint shard {path.name!r}: {err}") from None
    missing = [lacking for name, param in params.items()
               for lacking in _missing_parts(name, param, parts.get(name, set()))]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise WeightLoadError(f"checkpoint is missing tensor {missing[0]!r}{more}")


def _copy_tensor(params: dict[str, nn.Parameter], parts: dict[str, set[str]], name: str, tensor_slice,
                 sharding: _Sharding) -> None:
    """Copy this rank's part of one checkpoint tensor (a safetensors slice) into the parameter (or the part of one)
    it names, once."""
    param_name, part, target, spec, transposed = _destination(params, name, sharding)
    loaded = parts.setdefault(param_name, set())
    if part in loaded or (loaded and (part == "" or "" in loaded)):
        raise WeightLoadError(f"checkpoint tensor {name!r} fills {param_name!r}, which another tensor already filled")
    full_shape = tuple(tensor_slice.get_shape())
    try:
        shape = shard_shape(spec, full_shape, sharding.tp.size)
    except ValueError as err:
        raise WeightLoadError(f"tensor {name!r} of shape {full_shape}: {err}") from None
    expected = tuple(target.shape[::-1] if transposed else target.shape)
    if shape != expected:
        implied = expected if sharding.tp.size == 1 else f"{expected} on each of {sharding.tp.size} ranks"
        raise WeightLoadError(f"tensor {name!r} has shape {full_shape}, the config implies {implied}")
    tensor = shard_tensor(spec, tensor_slice, sharding.tp.rank, sharding.tp.size)
    with torch.no_grad():
        target.copy_(tensor.T if transposed else tensor)
    loaded.add(part)


def _destination(params: dict[str, nn.Parameter], name: str, sharding: _Sharding):
    """(parameter name, part, the view of the parameter to fill, the checkpoint tensor's split, whether the
    tensor is the view transposed). A part is "" for a whole parameter, or one expert's projection for the
    unfused expert layout."""
    match = _UNFUSED_EXPERT.match(name)
    param_name = name if match is None else f"{match['experts']}.{_FUSED_EXPERT[match['proj']]}"
    if param_name not in params:
        raise WeightLoadError(f"checkpoint tensor {name!r} does not belong to this model")
    param, spec = params[param_name], sharding.specs[param_name]
    if match is None:
        return param_name, "", param, spec, False
    expert = int(match["expert"])
    if expert >= param.shape[0]:
        raise WeightLoadError(f"checkpoint tensor {name!r} names expert {expert}; the config has {param.shape[0]}")
    target = param[expert]  # [in, out]: x @ W
    if match["proj"] != "down":
        target = target.chunk(2, dim=-1)[match["proj"] == "up"]  # this rank's gate columns first, then its up
    # One expert's [out, in] Linear weight: the fused [E, in, out] split's dim 1 (in) or 2 (out), transposed;
    # a gate or up tensor is one part of the fused gate_up.
    return param_name, f"{expert}.{match['proj']}", target, replace(spec, dim=2 - spec.dim, num_parts=1), True


def _missing_parts(name: str, param: nn.Parameter, loaded: set[str]) -> list[str]:
    """Checkpoint names of what `name` still lacks: itself, or the unfused expert tensors not yet seen."""
    if "" in loaded:
        return []
    if not loaded:
        return [name]
    experts, fused = name.rsplit(".", 1)
    projs = [proj for proj, target in _FUSED_EXPERT.items() if target == fused]
    return [f"{experts}.{e}.{proj}_proj.weight" for e in range(param.shape[0]) for proj in projs
            if f"{e}.{proj}" not in loaded]


def init_dummy_weights(model: nn.Module, seed: int = 0) -> None:
    """Random weights of this rank's shapes (benchmarks, comparisons), drawn on the model's own device and scaled
    as trained weights keep activations: matrices N(0, 1/fan_in), embeddings N(0, 1), norms 1 (biases 0), every
    other vector (biases, tanh gates, class embeddings) N(0, 1). Tiny uniform weights made the next token depend
    on the last one alone, so a comparison (against transformers, graphs against eager) could not see a bug in
    attention over the context. Each parameter draws from its own seed, so replicated parameters agree across
    tensor-parallel ranks."""
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for name, param in module.named_parameters(recurse=False):
                full_name = f"{module_name}.{name}" if module_name else name
                generator = torch.Generator(device=param.device).manual_seed(seed + zlib.crc32(full_name.encode()))
                _draw(module, name, param, generator)


def _draw(module: nn.Module, name: str, param: nn.Parameter, generator: torch.Generator) -> None:
    if type(module).__name__.endswith("Norm"):
        param.fill_(1.0 if name == "weight" else 0.0)
    elif param.ndim < 2 or isinstance(module, (nn.Embedding, VocabParallelEmbedding)):
        param.normal_(0.0, 1.0, generator=generator)
    else:
        param.normal_(0.0, _fan_in(param) ** -0.5, generator=generator)


def _fan_in(param: nn.Parameter) -> int:
    """Inputs per output: [out, in, ...] for linear and conv weights; experts are stored for x @ W, [E, in, out]."""
    return param.shape[1] if param.ndim == 3 else math.prod(param.shape[1:])


def load_model(
    model_dir: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    load_format: str = "auto",
    transformers_compat: bool = False,
    tp: TensorParallel = SINGLE,
) -> LoadedModel:
    """Build the model a directory's config.json describes and fill it from its safetensors files; under tensor
    parallelism, this rank's part of it (`tp`), read as slices of the checkpoint tensors."""
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"unsupported load_format {load_format!r}; use one of {', '.join(LOAD_FORMATS)}")
    model_dir = Path(model_dir)
    raw = read_config(model_dir)
    family = resolve_model_family(raw.get("model_type"))
    config = family.parse_config(raw)
    validate_tp(raw["model_type"], config, tp.size)
    torch_dtype = resolve_dtype(dtype, config.dtype)
    files = checkpoint_files(model_dir) if load_format != "dummy" else []
    with torch.device("meta"):
        model = family.model_class(config, transformers_compat=transformers_compat, tp=tp)
    model = model.to(torch_dtype).to_empty(device=device)
    for module in model.modules():
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()
    if load_format == "dummy":
        init_dummy_weights(model)
    else:
        load_weights(model, files, tp)
    return LoadedModel(model=model.eval(), config=config, dtype=torch_dtype)
