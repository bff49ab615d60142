"""What one forward step tells the attention layers; built by the model runner, only read by layers."""

from dataclasses import dataclass

import torch


@dataclass
class SeqCrossInputs:
    """Cross-attention inputs of one sequence's tokens in this step."""

    kv_rows: dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> rows of its vision K and V in the pool [V]
    mask: torch.Tensor  # [q_len, vision_tokens] bool, True = may attend
    attn_row_scale: torch.Tensor  # [q_len, 1]: 0 zeroes the attention output of a row (Meta's rule)
    mlp_row_scale: torch.Tensor  # [q_len, 1]: 0 for rows that see no image (both references)


@dataclass
class AttentionMetadata:
    """A flat batch: the new tokens of all sequences concatenated, sequence by sequence."""

    query_start_loc: list[int]  # [num_seqs + 1] offsets into the flat token axis
    seq_lens: list[int]  # [num_seqs] context length after this step (cached + new tokens)
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int64, physical KV block ids
    slot_mapping: torch.Tensor  # [num_tokens] int64, cache slot each new token's K/V is written to
    cross: list[SeqCrossInputs | None]  # per sequence; None = no image in that request
    cross_mlp_scale: torch.Tensor | None = None  # [num_tokens, 1]: SeqCrossInputs.mlp_row_scale, flat
    vision_kv_pool: torch.Tensor | None = None  # the KV pool as rows [rows, kv_heads, head_dim]: vision K/V live there

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)

    @property
    def has_cross(self) -> bool:
        return any(c is not None for c in self.cross)
