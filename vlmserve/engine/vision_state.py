"""Images' cross-attention K/V in the KV pool, and each step's cross-attention inputs.

Each image's K and V for every cross-attention layer are written, once, into the pool blocks the block manager
gave it; attention reads them back by row. Only the rows of the flat batch that cross-attention can change take
part: under Meta's rule, the tokens that see an image (the others pass the layer unchanged); under transformers'
rule, every token of a request with images (text before the first image attends to all its vision tokens, and
only its MLP branch is dropped).
"""

from dataclasses import dataclass

import torch

from vlmserve.engine.sequence import MultiModalInputs, Sequence
from vlmserve.layers.attention_metadata import CrossBatch, SeqCrossInputs


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


class VisionState:
    def __init__(self, model, kv_pool: torch.Tensor, rows_per_block: int, device: torch.device,
                 dtype: torch.dtype):
        self.model, self.kv_pool, self.rows_per_block = model, kv_pool, rows_per_block
        self.device, self.dtype = device, dtype
        self.cross_layers = sorted(model.config.text.cross_attention_layers)
        self.tokens_per_image = self.vision_tokens_per_image(model.config)
        self.num_images_encoded = 0

    @staticmethod
    def vision_tokens_per_image(config) -> int:
        return config.vision.max_num_tiles * config.vision.num_patches

    @classmethod
    def blocks_per_image(cls, config, block_size: int) -> int:
        """Blocks one image's K and V take for every cross-attention layer (padded tiles included)."""
        rows = 2 * len(config.text.cross_attention_layers) * cls.vision_tokens_per_image(config)
        return -(-rows // (len(config.text.self_attention_layers) * 2 * block_size))

    def step_inputs(self, seqs: list[Sequence], positions: list[list[int]], starts: list[int]) -> StepVisionInputs:
        return StepVisionInputs(cross=self.batch_inputs(seqs, positions, starts))

    def release(self, seq: Sequence) -> None:
        """Nothing per sequence: image K/V live in pool blocks the block manager owns."""

    def batch_inputs(self, seqs: list[Sequence], positions: list[list[int]], starts: list[int]) -> CrossBatch | None:
        """The step's cross-attention inputs; `positions` and `starts` give each sequence's new tokens and where
        they begin in the flat batch. None when no row takes part."""
        rows, query_start_loc, inputs, mlp_scales = [], [0], [], []
        for seq, seq_positions, start in zip(seqs, positions, starts):
            if seq.multimodal is None:
                continue
            sees_image = self._sees_image(seq.multimodal, seq_positions, seq.num_prompt_tokens)
            sees_any = sees_image.any(dim=1)
            # Tokens that see an image form a suffix of the chunk: every position from the first marker on does.
            first = 0 if self.model.transformers_compat else len(sees_any) - int(sees_any.sum())
            if first == len(sees_any):
                continue
            self._encode_missing(seq)
            rows.extend(range(start + first, start + len(sees_any)))
            query_start_loc.append(len(rows))
            inputs.append(SeqCrossInputs(self._kv_rows(seq), self._mask(seq.multimodal, sees_image[first:])))
            mlp_scales.append(sees_any[first:, None].to(self.dtype))
        if not inputs:
            return None
        mlp_scale = torch.cat(mlp_scales) if self.model.transformers_compat else None
        return CrossBatch(torch.tensor(rows, device=self.device), query_start_loc, inputs, mlp_scale, self.kv_pool)

    def _encode_missing(self, seq: Sequence) -> None:
        for index, entry in enumerate(seq.image_entries):
            if not entry.encoded:
                self._encode_image(seq.multimodal, index, entry.block_ids)
                entry.encoded = True

    def _encode_image(self, mm: MultiModalInputs, index: int, block_ids: list[int]) -> None:
        """Run the vision encoder on one image (alone, so its K/V never depend on what it was batched with) and
        write its K/V for every cross-attention layer into its blocks."""
        kv = self.model.encode_images(
            mm.pixel_values[index : index + 1].to(self.device, self.dtype),
            mm.aspect_ratio_ids[index : index + 1].to(self.device),
            mm.aspect_ratio_mask[index : index + 1].to(self.device),
        )
        rows = torch.cat([tensor for layer in self.cross_layers for tensor in kv[layer]])  # [2*layers*V, heads, d]
        self.kv_pool[self._image_rows(block_ids)[: rows.shape[0]]] = rows
        self.num_images_encoded += 1

    def _image_rows(self, block_ids: list[int]) -> torch.Tensor:
        """Pool rows of an image's blocks, in order."""
        offsets = torch.arange(self.rows_per_block, device=self.device)
        return (torch.tensor(block_ids, device=self.device)[:, None] * self.rows_per_block + offsets).flatten()

    def _kv_rows(self, seq: Sequence) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per cross-attention layer, the pool rows of the sequence's vision K and V, its images concatenated."""
        n = self.tokens_per_image
        image_rows = [self._image_rows(entry.block_ids) for entry in seq.image_entries]
        return {layer: (torch.cat([rows[2 * c * n : (2 * c + 1) * n] for rows in image_rows]),
                        torch.cat([rows[(2 * c + 1) * n : (2 * c + 2) * n] for rows in image_rows]))
                for c, layer in enumerate(self.cross_layers)}

    def _sees_image(self, mm: MultiModalInputs, positions: list[int], prompt_len: int) -> torch.Tensor:
        """[q, images] bool: which images each token attends to; generated tokens see what the last prompt token saw."""
        pos = torch.tensor(positions, device=self.device).clamp(max=prompt_len - 1)[:, None]
        starts = torch.tensor([r[0] for r in mm.token_ranges], device=self.device)[None, :]
        ends = torch.tensor([r[1] for r in mm.token_ranges], device=self.device)[None, :]
        return (pos >= starts) & (pos < ends)

    def _mask(self, mm: MultiModalInputs, sees_image: torch.Tensor) -> torch.Tensor:
        """[q, images*tiles*patches] bool from which images each token sees [q, images]: their real tiles' vision
        tokens. A row that sees no image (only under transformers' rule) attends to everything, as transformers does."""
        max_tiles = mm.pixel_values.shape[1]
        real_tile = torch.arange(max_tiles, device=self.device)[None, :] < torch.tensor(mm.num_tiles, device=self.device)[:, None]
        mask = sees_image[:, :, None, None] & real_tile[None, :, :, None]
        mask = mask.expand(-1, -1, -1, self.model.config.vision.num_patches).reshape(len(sees_image), -1)
        return mask | ~sees_image.any(dim=1, keepdim=True)
