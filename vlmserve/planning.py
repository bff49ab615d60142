"""Memory planning (`vlmserve plan`): what a model takes on each of N GPUs, and how many 4-tile image requests fit.

Assumptions, printed with every plan:
- Usable memory per GPU = gpu_mem x gpu_memory_utilization, the share the engine fills; the other (1 - utilization)
  holds the CUDA context, NCCL buffers and allocator slack.
- From the usable share: the rank's weights (split as vlmserve/distributed/sharding.py says: decoder and vision
  layers sharded, stems and projector replicated, vocabulary padded to a multiple of N), an activation reserve for
  a step's peak activations (default 1 GiB: a prefill of 8192 tokens through the 90B's MLP is ~1 GiB at N = 1;
  the engine does not profile this yet), and the rest is KV cache.
- The KV pool is the engine's (ModelRunner.kv_bytes_per_block): a block holds block_size tokens of every
  self-attention layer, K and V, of the rank's kv heads (heads / N, or one replicated head when N > kv heads).
- A Mllama image request takes blocks for its text and output tokens plus its image's cross-attention K/V (every
  cross-attention layer, all max_num_tiles tiles, padded ones included: VisionState.blocks_per_image). Those K/V
  are split by the same kv heads, so the block count is the same on every rank.
- A Llama 4 image request has no separate vision K/V: its image tokens are prompt tokens (model_spec G.5; 727 for
  4 local tiles + the global tile).
"""

import argparse
import math
import re
from dataclasses import dataclass

import torch

from vlmserve.bench.model_source import resolve_model, shipped_configs
from vlmserve.config import EngineConfig
from vlmserve.distributed.sharding import (
    kv_heads_per_rank,
    parameter_specs,
    shard_shape,
    validate_tp,
)
from vlmserve.engine.model_runner import ModelRunner
from vlmserve.families import ModelFamily, resolve_model_family
from vlmserve.models.loader import resolve_dtype

GiB = 1 << 30
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_bytes(text: str | int) -> int:
    """'80GiB', '80GB', '141 GiB', '24000MiB', '1.5TiB' or a plain byte count -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read {text!r} as a size; give a number and a unit, e.g. 80GiB, 80GB, 24000MiB "
                         "(KB, MB, GB, TB count in 1000s; KiB, MiB, GiB, TiB in 1024s)")
    return round(float(match.group(1)) * _UNITS[match.group(2).lower()])


@dataclass(frozen=True)
class MemoryPlan:
    """One model on N GPUs of gpu_mem_bytes each; every byte figure is per rank (all ranks hold the same)."""

    label: str
    model_type: str
    tp_size: int
    gpu_mem_bytes: int
    dtype: str
    gpu_memory_utilization: float
    activation_reserve_bytes: int
    block_size: int
    max_model_len: int
    prompt_len: int  # text tokens of a request, chat template and image markers included
    output_len: int
    image_tiles: int
    total_params: int
    weight_bytes: int
    replicated_weight_bytes: int
    kv_heads: int  # kv heads a rank holds
    kv_bytes_per_block: int
    request_tokens: int  # tokens of one image request in the self-attention KV cache
    image_kv_blocks: int  # Mllama: blocks of the image's cross-attention K/V; Llama 4: 0

    @property
    def usable_bytes(self) -> int:
        return round(self.gpu_mem_bytes * self.gpu_memory_utilization)

    @property
    def kv_budget_bytes(self) -> int:
        return self.usable_bytes - self.weight_bytes - self.activation_reserve_bytes

    @property
    def fits(self) -> bool:
        return self.num_kv_blocks > 0

    @property
    def num_kv_blocks(self) -> int:
        return max(self.kv_budget_bytes // self.kv_bytes_per_block, 0)

    @property
    def num_kv_tokens(self) -> int:
        return self.num_kv_blocks * self.block_size

    @property
    def max_context(self) -> int:
        """The longest sequence the engine would accept: max_model_len capped by the pool, as it sizes it."""
        return min(self.max_model_len, self.num_kv_tokens)

    @property
    def blocks_per_request(self) -> int:
        return -(-self.request_tokens // self.block_size) + self.image_kv_blocks

    @property
    def max_concurrent_requests(self) -> int:
        return self.num_kv_blocks // self.blocks_per_request


def plan_memory(model_config_dict: dict, tp_size: int, gpu_mem_bytes: int, *, dtype: str = "bfloat16",
                gpu_memory_utilization: float = EngineConfig.gpu_memory_utilization,
                block_size: int = EngineConfig.block_size, max_model_len: int | None = None,
                prompt_len: int = 128, output_len: int = 256, image_tiles: int = 4,
                activation_reserve_bytes: int = GiB, label: str | None = None) -> MemoryPlan:
    """Plan a Hugging Face config.json (as a dict) on `tp_size` GPUs; invalid settings raise ValueError."""
    model_type = model_config_dict.get("model_type")
    family = resolve_model_family(model_type)
    config = family.parse_config(model_config_dict)
    validate_tp(model_type, config, tp_size)
    _check_settings(gpu_mem_bytes, gpu_memory_utilization, block_size, prompt_len, output_len,
                    activation_reserve_bytes)
    torch_dtype = resolve_dtype(dtype, config.dtype)
    total, rank_numel, replicated_numel = _count_parameters(family, config, tp_size)
    kv_heads = config.text.num_key_value_heads
    rank_kv_heads = kv_heads_per_rank(kv_heads, tp_size)
    image_tokens, image_kv_blocks = _image_request(family, config, block_size, image_tiles)
    request_tokens = prompt_len + image_tokens + output_len
    max_model_len = max_model_len or config.text.max_position_embeddings
    if request_tokens > max_model_len:
        raise ValueError(f"an image request of {request_tokens} tokens exceeds max_model_len {max_model_len}")
    return MemoryPlan(
        label=label or model_type, model_type=model_type, tp_size=tp_size, gpu_mem_bytes=gpu_mem_bytes,
        dtype=str(torch_dtype).removeprefix("torch."), gpu_memory_utilization=gpu_memory_utilization,
        activation_reserve_bytes=activation_reserve_bytes, block_size=block_size, max_model_len=max_model_len,
        prompt_len=prompt_len, output_len=output_len, image_tiles=image_tiles, total_params=total,
        weight_bytes=rank_numel * torch_dtype.itemsize, replicated_weight_bytes=replicated_numel * torch_dtype.itemsize,
        kv_heads=rank_kv_heads,
        kv_bytes_per_block=ModelRunner.kv_bytes_per_block(config, block_size, torch_dtype) * rank_kv_heads // kv_heads,
        request_tokens=request_tokens, image_kv_blocks=image_kv_blocks,
    )


def _check_settings(gpu_mem_bytes, gpu_memory_utilization, block_size, prompt_len, output_len,
                    activation_reserve_bytes) -> None:
    if gpu_mem_bytes < 1:
        raise ValueError(f"GPU memory must be positive, got {gpu_mem_bytes} bytes")
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if block_size < 1 or prompt_len < 1 or output_len < 0 or activation_reserve_bytes < 0:
        raise ValueError(f"need block_size >= 1, prompt_len >= 1, output_len >= 0 and activation reserve >= 0; got "
                         f"{block_size}, {prompt_len}, {output_len}, {activation_reserve_bytes}")


def _count_parameters(family, config, tp_size: int) -> tuple[int, int, int]:
    """(total parameters, parameters a rank holds, of which replicated), from the model built on the meta device
    and the split its layers declare."""
    with torch.device("meta"):
        model = family.model_class(config)
    specs = parameter_specs(model)
    total = rank = replicated = 0
    for name, param in model.named_parameters():
        spec = specs[name]
        count = math.prod(shard_shape(spec, param.shape, tp_size))
        total, rank = total + param.numel(), rank + count
        replicated += count if spec.kind == "replicated" else 0
    return total, rank, replicated


def _image_request(family: ModelFamily, config, block_size: int, image_tiles: int) -> tuple[int, int]:
    """(prompt tokens one image adds, pool blocks its separate vision K/V take) for an image of `image_tiles` tiles."""
    return family.image_prompt_tokens(config, image_tiles), family.vision_state.blocks_per_image(config, block_size)


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / GiB:.2f}"


def format_plan(*plans: MemoryPlan) -> str:
    """A table with one column per plan (plans of one model and settings at different tensor-parallel sizes)."""
    first = plans[0]
    if any(p.label != first.label or p.gpu_mem_bytes != first.gpu_mem_bytes for p in plans):
        raise ValueError("format_plan puts plans of one model and GPU side by side")
    tiles = f"{first.image_tiles}-tile image request"
    weight_rows = [
        ("weights per rank (GiB)", lambda p: _gib(p.weight_bytes)),
        ("  of which replicated (GiB)", lambda p: _gib(p.replicated_weight_bytes)),
    ]
    kv_rows = [
        ("KV budget per rank (GiB)", lambda p: _gib(p.kv_budget_bytes)),
        ("KV heads per rank", lambda p: str(p.kv_heads)),
        ("KV bytes per block per rank (KiB)", lambda p: f"{p.kv_bytes_per_block / 1024:g}"),
        ("KV blocks", lambda p: f"{p.num_kv_blocks:,}"),
        ("KV tokens", lambda p: f"{p.num_kv_tokens:,}"),
        ("longest context (tokens)", lambda p: f"{p.max_context:,}"),
        (f"blocks per {tiles}", lambda p: f"{p.blocks_per_request:,}"),
        (f"max concurrent {tiles}s", lambda p: f"{p.max_concurrent_requests:,}"),
    ]
    width = max(len(name) for name, _ in kv_rows) + 2
    lines = [f"{first.label} ({first.model_type}, {first.total_params / 1e9:.2f} B parameters, {first.dtype}) on GPUs "
             f"of {_gib(first.gpu_mem_bytes)} GiB", "",
             " " * width + "".join(f"{'tp ' + str(p.tp_size):>12}" for p in plans)]
    for name, value in weight_rows + kv_rows:
        cells = (value(p) if p.fits or (name, value) in weight_rows else "-" for p in plans)
        lines.append(f"{name:<{width}}" + "".join(f"{cell:>12}" for cell in cells))
    lines += ["", *(_verdict(p) for p in plans), "", *_assumptions(first)]
    return "\n".join(lines)


def _verdict(plan: MemoryPlan) -> str:
    if not plan.fits:
        return (f"tp {plan.tp_size}: does not fit: {_gib(plan.weight_bytes)} GiB of weights + "
                f"{_gib(plan.activation_reserve_bytes)} GiB activation reserve per rank leave no room for the KV "
                f"cache in the usable {_gib(plan.usable_bytes)} GiB")
    if plan.max_concurrent_requests == 0:
        return f"tp {plan.tp_size}: fits, but not one {plan.image_tiles}-tile image request"
    return f"tp {plan.tp_size}: fits"


def _assumptions(plan: MemoryPlan) -> list[str]:
    image_tokens = plan.request_tokens - plan.prompt_len - plan.output_len
    image = resolve_model_family(plan.model_type).describe_image(image_tokens, plan.image_kv_blocks)
    usable, margin = plan.usable_bytes, plan.gpu_mem_bytes - plan.usable_bytes
    return [
        f"Assumes: usable memory per GPU = {_gib(plan.gpu_mem_bytes)} GiB x {plan.gpu_memory_utilization:g} = "
        f"{_gib(usable)} GiB;",
        f"  the other {_gib(margin)} GiB holds the CUDA context, NCCL buffers and allocator slack;",
        f"  the usable share holds the rank's weights, {_gib(plan.activation_reserve_bytes)} GiB of activations, then "
        f"KV blocks of {plan.block_size} tokens.",
        f"An image request: {plan.prompt_len} text + {plan.output_len} output tokens + {image}.",
        f"The engine runs at most --max-num-seqs (default {EngineConfig.max_num_seqs}) sequences at once, however "
        "many fit.",
        "Sharded: decoder attention and MLPs, vocabulary rows, vision encoder layers; replicated: norms, vision "
        "embeddings, projector.",
    ]


def add_plan_parser(commands) -> None:
    """Register `vlmserve plan` on the CLI's subcommands."""
    plan = commands.add_parser("plan", help="memory per GPU under tensor parallelism: weights, KV blocks, "
                                            "concurrent 4-tile image requests")
    plan.add_argument("--model", required=True, help="model directory, config.json, or shipped config name ("
                      f"{', '.join(shipped_configs())})")
    plan.add_argument("--tp", type=int, nargs="+", default=[1], help="tensor parallel size(s), one column each")
    plan.add_argument("--gpu-mem", required=True, help="memory of one GPU: 80GiB, 80GB, '141 GiB', 24000MiB")
    plan.add_argument("--dtype", default="bfloat16", help="auto, bfloat16, float16 or float32")
    plan.add_argument("--gpu-memory-utilization", type=float, default=EngineConfig.gpu_memory_utilization,
                      help="as serve's (default: %(default)s)")
    plan.add_argument("--block-size", type=int, default=EngineConfig.block_size,
                      help="tokens per KV block, as the engine's (default: %(default)s)")
    plan.add_argument("--prompt-len", type=int, default=128, help="text tokens of a request, chat template included")
    plan.add_argument("--output-len", type=int, default=256, help="tokens generated per request")
    plan.add_argument("--image-tiles", type=int, default=4, help="tiles of the image in each request")
    plan.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    plan.add_argument("--activation-reserve", default="1GiB", help="per rank, for a step's activations")
    plan.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    gpu_mem, reserve = parse_bytes(args.gpu_mem), parse_bytes(args.activation_reserve)
    with resolve_model(args.model, load_format="dummy") as source:
        plans = [plan_memory(source.config, tp, gpu_mem, dtype=args.dtype,
                             gpu_memory_utilization=args.gpu_memory_utilization, block_size=args.block_size,
                             max_model_len=args.max_model_len, prompt_len=args.prompt_len,
                             output_len=args.output_len, image_tiles=args.image_tiles,
                             activation_reserve_bytes=reserve, label=source.label)
                 for tp in args.tp]
    print(format_plan(*plans))
    return 0
