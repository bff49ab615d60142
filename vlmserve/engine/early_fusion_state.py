"""Llama 4's images (early fusion): the vision encoder's features replace the `<|patch|>` token embeddings.

An image is encoded when the first step that computes one of its tokens runs, and its features are kept until the
sequence's prefill has passed the image (a prompt chunked across steps takes them piece by piece). Its tokens' K/V
then live in ordinary KV blocks, so prefix caching shares them like text: blocks are keyed by the images their
tokens (or earlier ones) hold.
"""

import torch

from vlmserve.engine.sequence import Sequence
from vlmserve.engine.vision_state import StepVisionInputs


class EarlyFusionState:
    def __init__(self, model, kv_pool: torch.Tensor, rows_per_block: int, device: torch.device,
                 dtype: torch.dtype):
        self.model, self.device, self.dtype = model, device, dtype
        self.patch_token_id = model.config.image_token_index
        self.features: dict[int, dict[int, torch.Tensor]] = {}  # seq_id -> image index -> [patch tokens, hidden]
        self.num_images_encoded = 0

    @staticmethod
    def blocks_per_image(config, block_size: int) -> int:
        return 0  # image tokens take ordinary KV blocks

    def step_inputs(self, seqs: list[Sequence], positions: list[list[int]], starts: list[int]) -> StepVisionInputs:
        """The feature rows of the step's prompt image tokens and where those tokens sit in the flat batch (an image
        token the model generated is not one of them: it embeds as itself)."""
        features, rows = [], []
        for seq, seq_positions, start in zip(seqs, positions, starts):
            if seq.multimodal is not None and seq_positions and seq_positions[0] < seq.num_prompt_tokens:
                self._collect(seq, seq_positions[0], seq_positions[-1] + 1, start, features, rows)
        if not features:
            return StepVisionInputs()
        return StepVisionInputs(image_embeds=torch.cat(features),
                                image_token_rows=torch.tensor(rows, dtype=torch.int64, device=self.device))

    def release(self, seq: Sequence) -> None:
        self.features.pop(seq.seq_id, None)

    def _collect(self, seq: Sequence, start: int, end: int, flat_start: int, features: list, rows: list) -> None:
        """Append the features of the image tokens at prompt positions [start, end) and their flat-batch rows (the
        sequence's tokens begin at `flat_start`); an image's features are dropped once the step reaches its end."""
        prompt = seq.prompt_token_ids
        for index, (image_start, image_end) in enumerate(seq.multimodal.token_ranges):
            if image_start >= end or image_end <= start:
                continue
            first, last = max(start, image_start), min(end, image_end)
            done = prompt[image_start:first].count(self.patch_token_id)
            found = [p for p in range(first, last) if prompt[p] == self.patch_token_id]
            features.append(self._features(seq, index)[done:done + len(found)])
            rows.extend(flat_start + p - start for p in found)
            if image_end <= end:
                self._drop(seq, index)

    def _drop(self, seq: Sequence, index: int) -> None:
        cached = self.features[seq.seq_id]
        del cached[index]
        if not cached:
            del self.features[seq.seq_id]

    def _features(self, seq: Sequence, index: int) -> torch.Tensor:
        cached = self.features.setdefault(seq.seq_id, {})
        if index not in cached:
            mm = seq.multimodal
            first_tile = sum(mm.num_tiles[:index])
            tiles = mm.pixel_values[first_tile:first_tile + mm.num_tiles[index]]
            cached[index] = self.model.encode_images(tiles.to(self.device, self.dtype))
            self.num_images_encoded += 1
        return cached[index]
