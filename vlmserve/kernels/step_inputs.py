"""What the kernels read about a step beyond the runner's tensors: the host-side lengths as device tensors, and
the cross-attention inputs packed flat. Made once per step with one host-to-device copy each, never per layer,
so the layers launch their kernels without syncing the host."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DeviceLens:
    """A flat batch's lengths on the device, views of one int64 tensor."""

    seq_lens: torch.Tensor  # [S] context length after the step
    query_start_loc: torch.Tensor  # [S + 1] offsets of each sequence's new tokens in the flat batch
    decode_seqs: torch.Tensor  # [D] the sequences with one new token
    decode_rows: torch.Tensor  # [D] their rows of the flat batch

    @property
    def num_decodes(self) -> int:
        return self.decode_seqs.shape[0]

    @classmethod
    def build(cls, seq_lens: list[int], query_start_loc: list[int], device: torch.device) -> "DeviceLens":
        decodes = [i for i in range(len(seq_lens)) if query_start_loc[i + 1] - query_start_loc[i] == 1]
        flat = torch.tensor(seq_lens + query_start_loc + decodes + [query_start_loc[i] for i in decodes],
                            dtype=torch.int64, device=device)
        return cls(*flat.split([len(seq_lens), len(query_start_loc), len(decodes), len(decodes)]))


@dataclass(frozen=True)
class CrossInputs:
    """One cross-attention layer's inputs for a step, packed flat: row indices into the K/V pool and bool masks,
    no padded copy of any K/V. Sequence s owns query rows query_start_loc[s:s+2], vision tokens
    kv_start_loc[s:s+2] and its [q_len, kv_len] mask, row-major, at mask_start_loc[s:s+2]."""

    k_rows: torch.Tensor  # [N] int64 pool rows of every sequence's vision K, sequence after sequence
    v_rows: torch.Tensor  # [N] int64 the same for V
    kv_start_loc: torch.Tensor  # [S + 1] int64
    query_start_loc: torch.Tensor  # [S + 1] int64
    mask: torch.Tensor  # [sum of q_len * kv_len] bool, True = may attend
    mask_start_loc: torch.Tensor  # [S + 1] int64

    @classmethod
    def build(cls, query_start_loc: list[int], kv_rows: list[dict[int, tuple[torch.Tensor, torch.Tensor]]],
              masks: list[torch.Tensor]) -> dict[int, "CrossInputs"]:
        """Per layer, from each sequence's `layer -> (k_rows, v_rows)` and [q_len, kv_len] mask."""
        kv_start_loc, mask_start_loc = [0], [0]
        for mask in masks:
            kv_start_loc.append(kv_start_loc[-1] + mask.shape[1])
            mask_start_loc.append(mask_start_loc[-1] + mask.numel())
        device = masks[0].device
        offsets = torch.tensor(kv_start_loc + query_start_loc + mask_start_loc, dtype=torch.int64, device=device)
        kv_loc, q_loc, mask_loc = offsets.split([len(kv_start_loc), len(query_start_loc), len(mask_start_loc)])
        flat_mask = torch.cat([mask.flatten() for mask in masks])
        return {layer: cls(torch.cat([rows[layer][0] for rows in kv_rows]),
                           torch.cat([rows[layer][1] for rows in kv_rows]), kv_loc, q_loc, flat_mask, mask_loc)
                for layer in kv_rows[0]}
