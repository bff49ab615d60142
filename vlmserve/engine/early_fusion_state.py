"""Llama 4's images (early fusion): the vision encoder's features replace the `<|patch|>` token embeddings.

An image is encoded when the first step that computes one of its tokens runs, and its features are kept until the
sequence's prefill has passed the image (a prompt chunked across steps takes them piece by piece). Its tokens' K/V
then live in ordinary KV blocks, so prefix caching shares them like text: blocks are keyed by the images their
tokens (or earlier ones) hold.
"""

import torch

from vlmserve.engine.sequence import Sequence
from vlmserve.engine.step_data import FeaturePlan, ImageKey
from vlmserve.engine.vision_inputs import StepVisionInputs


class EarlyFusionState:
    def __init__(self, model, kv_pool: torch.Tensor, rows_per_block: int, device: torch.device,
                 dtype: torch.dtype):
        self.model, self.device, self.dtype = model, device, dtype
        self.patch_token_id = model.config.image_token_index
        self.features: dict[ImageKey, torch.Tensor] = {}  # [patch tokens, hidden] per image being prefilled
        self.released: list[ImageKey] = []  # dropped on rank 0 since the last plan: the other ranks drop them next
        self.num_images_encoded = 0

    @staticmethod
    def blocks_per_image(config, block_size: int) -> int:
        return 0  # image tokens take ordinary KV blocks

    def step_inputs(self, seqs: list[Sequence], positions: list[list[int]], starts: list[int]) -> StepVisionInputs:
        """The feature rows of the step's prompt image tokens and where those tokens sit in the flat batch (an image
        token the model generated is not one of them: it embeds as itself)."""
        return self.execute(self.plan(seqs, positions, starts))

    def plan(self, seqs: list[Sequence], positions: list[list[int]], starts: list[int]) -> FeaturePlan | None:
        plan = FeaturePlan(drops=self.released)
        self.released = []
        for seq, seq_positions, start in zip(seqs, positions, starts):
            if seq.multimodal is not None and seq_positions and seq_positions[0] < seq.num_prompt_tokens:
                self._collect(seq, seq_positions[0], seq_positions[-1] + 1, start, plan)
        return plan if plan.pieces or plan.drops else None

    def execute(self, plan: FeaturePlan | None) -> StepVisionInputs:
        """Encode the plan's new images, gather its feature rows, drop what is done with (every rank runs this)."""
        if plan is None:
            return StepVisionInputs()
        for key, tiles in plan.encodes:
            self.features[key] = self.model.encode_images(tiles.to(self.device, self.dtype))
            self.num_images_encoded += 1
        features = [self.features[key][first:last] for key, first, last in plan.pieces]
        for key in plan.drops:
            self.features.pop(key, None)
        if not features:
            return StepVisionInputs()
        return StepVisionInputs(image_embeds=torch.cat(features),
                                image_token_rows=torch.tensor(plan.rows, dtype=torch.int64, device=self.device))

    def release(self, seq: Sequence) -> None:
        keys = [key for key in self.features if key[0] == seq.seq_id]
        for key in keys:
            del self.features[key]
        self.released.extend(keys)

    def _collect(self, seq: Sequence, start: int, end: int, flat_start: int, plan: FeaturePlan) -> None:
        """Plan the features of the image tokens at prompt positions [start, end) and their flat-batch rows (the
        sequence's tokens begin at `flat_start`); an image's features are dropped once the step reaches its end."""
        prompt = seq.prompt_token_ids
        for index, (image_start, image_end) in enumerate(seq.multimodal.token_ranges):
            if image_start >= end or image_end <= start:
                continue
            key = (seq.seq_id, index)
            if key not in self.features:
                mm = seq.multimodal
                first_tile = sum(mm.num_tiles[:index])
                plan.encodes.append((key, mm.pixel_values[first_tile:first_tile + mm.num_tiles[index]]))
            first, last = max(start, image_start), min(end, image_end)
            done = prompt[image_start:first].count(self.patch_token_id)
            found = [p for p in range(first, last) if prompt[p] == self.patch_token_id]
            plan.pieces.append((key, done, done + len(found)))
            plan.rows.extend(flat_start + p - start for p in found)
            if image_end <= end:
                plan.drops.append(key)
