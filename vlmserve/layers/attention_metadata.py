"""What one forward step tells the attention layers; built by the model runner, only read by layers."""

from dataclasses import dataclass

import torch


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


@dataclass
class AttentionMetadata:
    """A flat batch: the new tokens of all sequences concatenated, sequence by sequence."""

    query_start_loc: list[int]  # [num_seqs + 1] offsets into the flat token axis
    seq_lens: list[int]  # [num_seqs] context length after this step (cached + new tokens)
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int64, physical KV block ids
    slot_mapping: torch.Tensor  # [num_tokens] int64, cache slot each new token's K/V is written to
    cross: CrossBatch | None = None  # None: no row of this step has anything to cross-attend

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)
