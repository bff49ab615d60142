"""What one engine step is made of, as plain data: the batch the scheduler hands out, the forward the model runner
plans from it (sent as it is to every tensor-parallel rank, its image work included), and what sampling gave back.

Pure Python at run time (torch and Sequence appear in annotations only), so the scheduler stays torch-free and
this module imports nothing of the engine's. Below the engine, the kernels' step inputs (`DeviceLens`,
`CrossInputs`: device tensors) are in vlmserve/kernels/step_inputs.py and what the layers read
(`AttentionMetadata`) in vlmserve/layers/attention_metadata.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from vlmserve.engine.sequence import Sequence


@dataclass
class ScheduledBatch:
    """The scheduler's pick for one step: which sequences run and how many of their tokens each computes."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)  # per sequence: tokens computed this step
    num_tokens: int = 0

    def add(self, seq: Sequence, num_new_tokens: int) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(num_new_tokens)
        self.num_tokens += num_new_tokens

    def remove(self, seq: Sequence) -> None:
        """Take `seq` out (the scheduler preempted it after scheduling it); no-op if it is not in."""
        for index, scheduled in enumerate(self.seqs):
            if scheduled is seq:
                del self.seqs[index]
                self.num_tokens -= self.num_new_tokens.pop(index)
                return


@dataclass
class ImageEncode:
    """One image for the vision encoder, and the pool blocks its cross-attention K/V go to. Every rank encodes it
    (the vision tower may be split across them) and writes its own kv heads into its own pool."""

    pixel_values: torch.Tensor  # [1, tiles, 3, H, W], on the CPU
    aspect_ratio_ids: torch.Tensor  # [1]
    aspect_ratio_mask: torch.Tensor  # [1, tiles]
    block_ids: list[int]


@dataclass
class SeqCrossPlan:
    image_block_ids: list[list[int]]  # per image of the sequence: its pool blocks
    num_tiles: list[int]  # per image: its real tiles
    max_tiles: int
    sees_image: torch.Tensor  # [q, images] bool, on the CPU: which images each cross-attending row sees


@dataclass
class CrossPlan:
    """A step's cross-attention work (Llama 3.2 Vision), from the sequences, in plain data and CPU tensors: rank 0
    makes it, every rank turns it into the same CrossBatch over its own KV pool (vision_state.py)."""

    encodes: list[ImageEncode]  # images to encode before the forward
    rows: list[int]  # flat-batch rows that cross-attend, sequence by sequence
    query_start_loc: list[int]
    seqs: list[SeqCrossPlan]


ImageKey = tuple[int, int]  # (seq_id, image index): names an image's features on every rank


@dataclass
class FeaturePlan:
    """A step's image work (Llama 4, early fusion) in plain data and CPU tensors: rank 0 makes it from the
    sequences; every rank encodes the new images, keeps their features under the same keys, and gathers the same
    rows from them (early_fusion_state.py)."""

    encodes: list[tuple[ImageKey, torch.Tensor]] = field(default_factory=list)  # key, tiles [tiles, 3, H, W]
    pieces: list[tuple[ImageKey, int, int]] = field(default_factory=list)  # key, feature rows [start, stop)
    rows: list[int] = field(default_factory=list)  # the pieces' flat-batch rows, in order
    drops: list[ImageKey] = field(default_factory=list)  # features no later step needs (after this one)


@dataclass
class ForwardStep:
    """One step's forward as plain data and CPU tensors, made by rank 0 from its sequences: every tensor-parallel
    rank runs the same step on its own shard and KV pool (`ModelRunner.execute`). The lengths are host lists here
    (the plan); the runner turns them into the kernels' `DeviceLens` once, on the device."""

    input_ids: list[int]
    positions: list[int]
    query_start_loc: list[int]
    seq_lens: list[int]
    block_tables: list[list[int]]
    slot_mapping: list[int]
    vision: CrossPlan | FeaturePlan | None  # the vision state's plan, or None: no image work this step
    logit_rows: list[int] | None  # flat-batch rows to compute logits at; None: every row


@dataclass
class StepResult:
    """The sequences whose step reached their last token, each with its sampled token (and logprobs), and those
    whose sampling raised: one request's bad sampling fails that request, never the step."""

    seqs: list[Sequence]
    token_ids: list[int]
    logprobs: list[dict[int, float] | None]  # per sequence: sampled + top tokens, when asked for
    failed: list[tuple[Sequence, Exception]] = field(default_factory=list)
