"""How every parameter is split across tensor-parallel ranks. Each parallel layer (vlmserve/layers/) declares the
split of the parameters it makes, in its `shard_specs`; a parameter no parallel layer made is whole on every rank
(replicated). The weight loader and the memory planner read those declarations through `parameter_specs`, by the
Hub names our modules carry (model_spec E.1, G.7), and cut tensors with the functions here. A declaration that
disagrees with the shape its layer gives a rank fails the loader's shape check, by name.

Text decoder (both families), Megatron's layout — one all-reduce after each attention block and each MLP:
- column (split dim 0, the output rows): q_proj, gate_proj, up_proj, shared_expert.{gate,up}_proj. q is split by
  whole heads (heads % N == 0): rows come in head_dim groups, so an even row split is a head split.
- kv_column: k_proj, v_proj (self- and cross-attention). N <= kv heads: kv_heads/N whole heads per rank. N > kv
  heads (N a multiple of them): each rank holds the one kv head its q heads read, kv head r * kv_heads // N.
- row (split dim 1, the input columns): o_proj, down_proj, shared_expert.down_proj.
- vocab: embed_tokens and lm_head rows. A rank holds ceil(rows / N) rows, rank r from row r * ceil(rows / N); the
  vocabulary is padded to N * ceil(rows / N) rows with zero rows past the checkpoint's end (Mllama's 128 264
  embedding rows at N = 16: 8 017 a rank, the last rank 8 009 real). The embedding masks ids outside its range and
  all-reduces; the LM head's padded logits are cut off before sampling.
- Llama 4 experts: `gate_up_proj` [E, H, 2I] holds gate in columns [0, I) and up in [I, 2I); a rank takes its 1/N
  of each half (two parts along dim 2, concatenated), so its local gate and up stay aligned. `down_proj` [E, I, H]
  is split along I (dim 1). Every rank holds every expert (tensor parallel inside experts, no expert parallelism).
- replicated: norms, gates, Mllama's per-head q_norm/k_norm, Llama 4's router (each rank routes every token the
  same way), and the biases of row-parallel layers (added once, after the all-reduce).

Vision encoder: its transformer layers are sharded like the decoder (q/k/v/fc1 column by the 16 vision heads,
o/fc2 row); its stems (patch/position/tile embeddings, layer norms, gates), Llama 4's vision adapter and the
projector are replicated. The numbers behind this, per image:
- Mllama (11B and 90B share the tower). Encoder: 0.864 B parameters, 0.787 B of them in the 40 layers (19.66 M
  each). All tiles of an image attend jointly: 4 x 1608 = 6432 tokens, so one image costs 40 x (2 x 6432 x 19.66 M
  + 4 x 6432^2 x 1280) = 18.6 TFLOP, the compute of ~1000 prompt tokens of the 11B decoder (2 x 9.25 B FLOP each,
  embedding excluded) or ~107 of the 90B's (2 x 86.6 B). Replicated, every rank spends the single-GPU time on it
  (~31 ms on an H100 at a realistic 600 TFLOP/s); sharded, 1/N of it plus 80 all-reduces of 6432 x 1280 x 2 B =
  16.5 MB — at N = 8 over NVLink (~350 GB/s bus bandwidth) ~0.08 ms each, ~7 ms in all, against ~27 ms saved.
  Memory saved by sharding: (1 - 1/N) x 1.57 GB a rank, small beside the decoder, so compute decides. vLLM and TGI
  shard it the same way.
- Replicated parts: the position/tile tables (76 M parameters, 0.15 GB) are lookups, not matmuls; the projector
  (7680 x H: 31.5 M / 62.9 M) is one matmul per image (0.4 / 0.8 TFLOP, 2-4 % of the encoder) whose output every
  rank needs whole for its cross-attention k/v heads — sharding it would add an all-reduce of 6404 x H x 2 B
  (52 / 105 MB) to save under a millisecond.
- Llama 4: 34 layers of 23.8 M over 577 tokens per tile, 1.0 TFLOP a tile, 5.0 TFLOP for a 4-tile image (4 local
  tiles + the global one): ~150 prompt tokens of Scout's 17 B active parameters. Sharded for the same reason, with
  68 all-reduces of tiles x 1.6 MB (latency-bound, ~2 ms). The vision adapter (39.8 M, 144 tokens a tile, 11.5
  GFLOP a tile) and the projector (21 M) are replicated.
- Without NVLink (PCIe, ~20 GB/s) the same all-reduces take ~115 ms for a Mllama image, more than replication
  costs; tensor parallelism over PCIe is not a configuration we plan for.
"""

from dataclasses import dataclass

import torch
from torch import nn

KINDS = ("column", "row", "vocab", "replicated", "kv_column")


@dataclass(frozen=True)
class ShardSpec:
    """How one parameter is split: along `dim` (None = every rank holds all of it)."""

    dim: int | None
    kind: str
    num_parts: int = 1  # fused tensors: equal parts along `dim`, each split on its own (gate_up_proj: 2)
    num_kv_heads: int | None = None  # kv_column: the heads along dim 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown shard kind {self.kind!r}; one of {', '.join(KINDS)}")
        if (self.dim is None) != (self.kind == "replicated"):
            raise ValueError(f"a {self.kind} shard needs dim {'None' if self.kind == 'replicated' else 'set'}")


REPLICATED = ShardSpec(None, "replicated")
COLUMN = ShardSpec(0, "column")
ROW = ShardSpec(1, "row")
VOCAB = ShardSpec(0, "vocab")


def parameter_specs(model: nn.Module) -> dict[str, ShardSpec]:
    """Every parameter's split, by its name in `model`: what the layer that made it declares in its `shard_specs`
    ({parameter attribute: spec}), else replicated. Declared on the module, not the parameter: materialising a
    meta-device model (`to_empty`) replaces its parameters, and their attributes with them."""
    return {f"{prefix}.{name}" if prefix else name: getattr(module, "shard_specs", {}).get(name, REPLICATED)
            for prefix, module in model.named_modules() for name, _ in module.named_parameters(recurse=False)}


def kv_heads_per_rank(num_kv_heads: int, tp_size: int) -> int:
    """kv heads a rank holds: an even share, or one replicated head when there are more ranks than heads."""
    return max(num_kv_heads // tp_size, 1)


def _tp_problems(config, tp_size: int) -> list[str]:
    problems = [f"{name} {size}" for name, size in config.tp_split_sizes().items() if size % tp_size]
    kv = config.text.num_key_value_heads
    if kv % tp_size and tp_size % kv:
        problems.append(f"text num_key_value_heads {kv} (N must divide it, or be a multiple of it to replicate "
                        "kv heads)")
    return problems


def validate_tp(model_type: str, config, tp_size: int) -> None:
    """Raise ValueError naming every size that `tp_size` ranks cannot split into whole heads or equal slices:
    those of the family's `config.tp_split_sizes()`, and its kv heads."""
    if not isinstance(tp_size, int) or tp_size < 1:
        raise ValueError(f"tensor parallel size must be a whole number >= 1, got {tp_size!r}")
    problems = _tp_problems(config, tp_size)
    if problems:
        heads = config.text.num_attention_heads
        valid = [n for n in range(1, heads + 1) if not _tp_problems(config, n)]
        raise ValueError(f"tensor parallel size {tp_size} cannot split this {model_type} model: it does not divide "
                         f"{'; '.join(problems)}. Sizes that work: {', '.join(map(str, valid))}")


def _ranges(spec: ShardSpec, size: int, rank: int, tp_size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges along spec.dim that `rank` holds, in the order they are concatenated."""
    if spec.kind == "vocab":
        per_rank = -(-size // tp_size)
        return [(min(rank * per_rank, size), min((rank + 1) * per_rank, size))]
    if spec.kind == "kv_column":
        kv = spec.num_kv_heads
        if size % kv or (kv % tp_size and tp_size % kv):
            raise ValueError(f"{size} rows of {kv} kv heads cannot be split over {tp_size} ranks: the ranks must "
                             "divide the heads or be a multiple of them")
        head_dim = size // kv
        first, count = rank * kv // tp_size, kv_heads_per_rank(kv, tp_size)
        return [(first * head_dim, (first + count) * head_dim)]
    part = size // spec.num_parts
    if size % (spec.num_parts * tp_size):
        raise ValueError(f"a {spec.kind} split of {spec.num_parts} part(s) over {tp_size} ranks needs a size "
                         f"divisible by {spec.num_parts * tp_size}, got {size}")
    per_rank = part // tp_size
    return [(p * part + rank * per_rank, p * part + (rank + 1) * per_rank) for p in range(spec.num_parts)]


def shard_slices(spec: ShardSpec, full_shape, rank: int, tp_size: int) -> list[tuple[slice, ...]]:
    """The pieces of the full checkpoint tensor that `rank` holds, concatenated along spec.dim in this order: one
    piece, or one per part of a fused tensor (gate_up_proj: its gate slice, then its up slice)."""
    if not 0 <= rank < tp_size:
        raise ValueError(f"rank {rank} is outside 0..{tp_size - 1}")
    if spec.dim is None:
        return [tuple(slice(None) for _ in full_shape)]
    return [tuple(slice(start, stop) if d == spec.dim else slice(None) for d in range(len(full_shape)))
            for start, stop in _ranges(spec, full_shape[spec.dim], rank, tp_size)]


def shard_slice(spec: ShardSpec, full_shape, rank: int, tp_size: int) -> tuple[slice, ...]:
    """The one contiguous slice of the full tensor that `rank` holds (fused tensors: use shard_slices)."""
    pieces = shard_slices(spec, full_shape, rank, tp_size)
    if len(pieces) != 1:
        raise ValueError(f"a rank holds {len(pieces)} separate pieces of a fused tensor; use shard_slices")
    return pieces[0]


def shard_shape(spec: ShardSpec, full_shape, tp_size: int) -> tuple[int, ...]:
    """The shape every rank's tensor has (vocabulary shards padded to ceil(rows / N) rows)."""
    shape = list(full_shape)
    if spec.kind == "vocab":
        shape[0] = -(-shape[0] // tp_size)
    elif spec.dim is not None:
        shape[spec.dim] = sum(stop - start for start, stop in _ranges(spec, shape[spec.dim], 0, tp_size))
    return tuple(shape)


def shard_tensor(spec: ShardSpec, full, rank: int, tp_size: int) -> torch.Tensor:
    """`rank`'s tensor cut from `full`: a torch tensor, or a safetensors slice (`safe_open(...).get_slice(name)`),
    which reads only the rank's bytes. Vocabulary shards past the checkpoint's last row get zero rows."""
    full_shape = tuple(full.shape) if isinstance(full, torch.Tensor) else tuple(full.get_shape())
    pieces = [full[index] for index in shard_slices(spec, full_shape, rank, tp_size)]
    tensor = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=spec.dim)
    missing_rows = shard_shape(spec, full_shape, tp_size)[0] - tensor.shape[0] if spec.kind == "vocab" else 0
    if missing_rows:
        tensor = torch.cat([tensor, tensor.new_zeros((missing_rows, *tensor.shape[1:]))])
    return tensor
