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
    """A flat batch: the new tokens of all sequences concatenated, sequence by sequence."""

    query_start_loc: list[int]  # [num_seqs + 1] offsets into the flat token axis
    seq_lens: list[int]  # [num_seqs] context length after this step (cached + new tokens)
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int64, physical KV block ids
    slot_mapping: torch.Tensor  # [num_tokens] int64, cache slot each new token's K/V is written to
    cross: CrossBatch | None = None  # None: no row of this step has anything to cross-attend
    device_lens: DeviceLens | None = None  # seq_lens, query_start_loc as device tensors: made here on CUDA

    def __post_init__(self):
        if self.device_lens is None and self.block_tables.is_cuda:
            self.device_lens = DeviceLens.build(self.seq_lens, self.query_start_loc, self.block_tables.device)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)
