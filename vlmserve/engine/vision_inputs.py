"""What a step's images give the model, and the interface of the per-family backends that make it: VisionState
(Llama 3.2 Vision: images' cross-attention K/V in the KV pool) and EarlyFusionState (Llama 4: image features in
place of image-token embeddings).

Rank 0 plans each step from its sequences (`plan`: plain data and CPU tensors, sent to every rank); every rank
executes the plan on its own shard (`execute`)."""

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from vlmserve.engine.sequence import Sequence
from vlmserve.layers.attention_metadata import CrossBatch


@dataclass
class StepVisionInputs:
    """What a step's images give the model: cross-attention inputs (Llama 3.2 Vision), or the feature rows that
    replace the step's image-token embeddings, in flat-batch order (Llama 4)."""

    cross: CrossBatch | None = None
    image_embeds: torch.Tensor | None = None  # [image tokens in the step, hidden]
    image_token_rows: torch.Tensor | None = None  # [image tokens in the step]: their rows in the flat batch

    def forward_kwargs(self) -> dict:
        if self.image_embeds is None:
            return {}
        return {"image_embeds": self.image_embeds, "image_token_rows": self.image_token_rows}


@runtime_checkable
class VisionInputs(Protocol):
    """A family's vision backend, built by the model runner over its KV pool ([rows, kv_heads, head_dim])."""

    num_images_encoded: int

    def __init__(self, model, kv_pool: torch.Tensor, rows_per_block: int, device: torch.device,
                 dtype: torch.dtype): ...

    @staticmethod
    def blocks_per_image(config, block_size: int) -> int:
        """Pool blocks one image's separate vision K/V take (0: its tokens take ordinary KV blocks)."""

    def plan(self, seqs: list[Sequence], positions: list[list[int]], starts: list[int]) -> Any | None:
        """The step's image work; `positions` and `starts` give each sequence's new tokens and where they begin in
        the flat batch. None when there is none."""

    def execute(self, plan: Any | None) -> StepVisionInputs:
        """Run a plan on this rank."""

    def step_inputs(self, seqs: list[Sequence], positions: list[list[int]], starts: list[int]) -> StepVisionInputs:
        """Plan and execute at once (one rank)."""

    def release(self, seq: Sequence) -> None:
        """Forget what is kept for a finished sequence."""
