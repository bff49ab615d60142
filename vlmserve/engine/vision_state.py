"""Images' cross-attention K/V in the KV pool, and each step's cross-attention inputs.

Each image's K and V for every cross-attention layer are written, once, into the pool blocks the block manager
gave it; attention reads them back by row. Only the rows of the flat batch that cross-attention can change take
part: under Meta's rule, the tokens that see an image (the others pass the layer unchanged); under transformers'
rule, every token of a request with images (text before the first image attends to all its vision tokens, and
only its MLP branch is dropped).
"""

import torch

from vlmserve.engine.sequence import MultiModalInputs, Sequence
from vlmserve.engine.step_data import CrossPlan, ImageEncode, SeqCrossPlan
from vlmserve.engine.vision_inputs import StepVisionInputs
from vlmserve.layers.attention_metadata import CrossBatch, SeqCrossInputs


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
        return self.execute(self.plan(seqs, positions, starts))

    def release(self, seq: Sequence) -> None:
        """Nothing per sequence: image K/V live in pool blocks the block manager owns."""

    def plan(self, seqs: list[Sequence], positions: list[list[int]], starts: list[int]) -> CrossPlan | None:
        """The step's cross-attention work; `positions` and `starts` give each sequence's new tokens and where
        they begin in the flat batch. None when no row takes part."""
        plan = CrossPlan([], [], [0], [])
        for seq, seq_positions, start in zip(seqs, positions, starts):
            if seq.multimodal is None:
                continue
            sees_image = self._sees_image(seq.multimodal, seq_positions, seq.num_prompt_tokens)
            sees_any = sees_image.any(dim=1)
            # Tokens that see an image form a suffix of the chunk: every position from the first marker on does.
            first = 0 if self.model.transformers_compat else len(sees_any) - int(sees_any.sum())
            if first == len(sees_any):
                continue
            plan.encodes.extend(self._missing(seq))
            plan.rows.extend(range(start + first, start + len(sees_any)))
            plan.query_start_loc.append(len(plan.rows))
            mm = seq.multimodal
            plan.seqs.append(SeqCrossPlan([entry.block_ids for entry in seq.image_entries], list(mm.num_tiles),
                                          mm.pixel_values.shape[1], sees_image[first:]))
        return plan if plan.seqs else None

    def execute(self, plan: CrossPlan | None) -> StepVisionInputs:
        """Encode the plan's images into the pool, then build its CrossBatch (every rank runs this)."""
        if plan is None:
            return StepVisionInputs()
        for image in plan.encodes:
            self._encode_image(image)
        sees_image = [seq.sees_image.to(self.device) for seq in plan.seqs]
        inputs = [SeqCrossInputs(self._kv_rows(seq.image_block_ids), self._mask(seq, sees))
                  for seq, sees in zip(plan.seqs, sees_image)]
        mlp_scale = (torch.cat([sees.any(dim=1)[:, None].to(self.dtype) for sees in sees_image])
                     if self.model.transformers_compat else None)
        rows = torch.tensor(plan.rows, device=self.device)
        return StepVisionInputs(cross=CrossBatch(rows, plan.query_start_loc, inputs, mlp_scale, self.kv_pool))

    @staticmethod
    def _missing(seq: Sequence) -> list[ImageEncode]:
        """The sequence's images whose K/V are not in the pool yet (marked encoded: the step will write them)."""
        missing, mm = [], seq.multimodal
        for index, entry in enumerate(seq.image_entries):
            if not entry.encoded:
                missing.append(ImageEncode(mm.pixel_values[index : index + 1], mm.aspect_ratio_ids[index : index + 1],
                                           mm.aspect_ratio_mask[index : index + 1], entry.block_ids))
                entry.encoded = True
        return missing

    def _encode_image(self, image: ImageEncode) -> None:
        """Run the vision encoder on one image (alone, so its K/V never depend on what it was batched with) and
        write its K/V for every cross-attention layer into its blocks."""
        kv = self.model.encode_images(image.pixel_values.to(self.device, self.dtype),
                                      image.aspect_ratio_ids.to(self.device), image.aspect_ratio_mask.to(self.device))
        rows = torch.cat([tensor for layer in self.cross_layers for tensor in kv[layer]])  # [2*layers*V, heads, d]
        self.kv_pool[self._image_rows(image.block_ids)[: rows.shape[0]]] = rows
        self.num_images_encoded += 1

    def _image_rows(self, block_ids: list[int]) -> torch.Tensor:
        """Pool rows of an image's blocks, in order."""
        offsets = torch.arange(self.rows_per_block, device=self.device)
        return (torch.tensor(block_ids, device=self.device)[:, None] * self.rows_per_block + offsets).flatten()

    def _kv_rows(self, image_block_ids: list[list[int]]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per cross-attention layer, the pool rows of a sequence's vision K and V, its images concatenated."""
        n = self.tokens_per_image
        image_rows = [self._image_rows(block_ids) for block_ids in image_block_ids]
        return {layer: (torch.cat([rows[2 * c * n : (2 * c + 1) * n] for rows in image_rows]),
                        torch.cat([rows[(2 * c + 1) * n : (2 * c + 2) * n] for rows in image_rows]))
                for c, layer in enumerate(self.cross_layers)}

    @staticmethod
    def _sees_image(mm: MultiModalInputs, positions: list[int], prompt_len: int) -> torch.Tensor:
        """[q, images] bool: which images each token attends to; generated tokens see what the last prompt token saw."""
        pos = torch.tensor(positions).clamp(max=prompt_len - 1)[:, None]
        starts = torch.tensor([r[0] for r in mm.token_ranges])[None, :]
        ends = torch.tensor([r[1] for r in mm.token_ranges])[None, :]
        return (pos >= starts) & (pos < ends)

    def _mask(self, seq: SeqCrossPlan, sees_image: torch.Tensor) -> torch.Tensor:
        """[q, images*tiles*patches] bool from which images each token sees [q, images]: their real tiles' vision
        tokens. A row that sees no image (only under transformers' rule) attends to everything, as transformers does."""
        real_tile = (torch.arange(seq.max_tiles, device=self.device)[None, :]
                     < torch.tensor(seq.num_tiles, device=self.device)[:, None])
        mask = sees_image[:, :, None, None] & real_tile[None, :, :, None]
        mask = mask.expand(-1, -1, -1, self.model.config.vision.num_patches).reshape(len(sees_image), -1)
        return mask | ~sees_image.any(dim=1, keepdim=True)
