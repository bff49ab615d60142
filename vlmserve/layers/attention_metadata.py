"""What one forward step tells the attention layers; built by the model runner, only read by layers."""

from dataclasses import dataclass, field

import torch

from vlmserve.kernels.step_inputs import CrossInputs, DeviceLens


@dataclass
class SeqCrossInputs:
    """Cross-attention inputs of one sequence's rows in this step."""

    kv_rows: dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> rows of its vision K and V in the pool [V]
    mask: torch.Tensor  # [q_len, vision_tokens] bool, True = may attend


@dataclass
class CrossBatch:
    """The rows of the flat batch that cross-attention layers compute (the others pass them unchanged)."""

    rows: torch.Tensor  # [R] int64 indices into the flat token axis, sequence by sequence
    query_start_loc: list[int]  # [S + 1] offsets into `rows` of each sequence in `seqs`
    seqs: list[SeqCrossInputs]
    mlp_scale: torch.Tensor | None  # [R, 1]: 0 drops the MLP branch of rows that see no image; None: all see one
    kv_pool: torch.Tensor  # the KV pool as rows [rows, kv_heads, head_dim]: the vision K/V live there
    layer_inputs: dict[int, CrossInputs] = field(init=False)  # per layer, `seqs` packed flat for the kernels

    def __post_init__(self):
        self.layer_inputs = CrossInputs.build(self.query_start_loc, [seq.kv_rows for seq in self.seqs],
                                              [seq.mask for seq in self.seqs])


@dataclass
class AttentionMetadata:
    """A flat batch: the new tokens of all sequences concatenated, sequence by sequence. Its lengths are device
    tensors only, on the block tables' device: what every attention kernel (and its torch twin) takes."""

    lens: DeviceLens  # context length after this step (cached + new tokens), offsets into the flat token axis
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int64, physical KV block ids
    slot_mapping: torch.Tensor  # [num_tokens] int64, cache slot each new token's K/V is written to
    cross: CrossBatch | None = None  # None: no row of this step has anything to cross-attend

    @classmethod
    def build(cls, query_start_loc: list[int], seq_lens: list[int], block_tables: torch.Tensor,
              slot_mapping: torch.Tensor, cross: CrossBatch | None = None) -> "AttentionMetadata":
        """From the host-side lengths: `query_start_loc` [num_seqs + 1] offsets of each sequence's new tokens,
        `seq_lens` [num_seqs] context lengths, copied to the device once for the whole step."""
        return cls(DeviceLens.build(seq_lens, query_start_loc, block_tables.device), block_tables, slot_mapping,
                   cross)

    @property
    def num_seqs(self) -> int:
        return self.block_tables.shape[0]
