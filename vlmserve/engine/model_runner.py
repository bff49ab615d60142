"""The one place a step's tensors are made: inputs, slot mapping, cross-attention masks; then forward + sample."""

from dataclasses import dataclass

import torch

from vlmserve.engine.sampler import Sampler, SamplingMetadata
from vlmserve.engine.scheduler import ScheduledBatch
from vlmserve.engine.structured_output import StructuredOutputManager
from vlmserve.engine.sequence import MultiModalInputs, Sequence
from vlmserve.layers.attention_metadata import AttentionMetadata, SeqCrossInputs


@dataclass
class StepResult:
    """The sequences whose step reached their last token, each with its sampled token (and logprobs)."""

    seqs: list[Sequence]
    token_ids: list[int]
    logprobs: list[dict[int, float] | None]  # per sequence: sampled + top tokens, when asked for


class ModelRunner:
    def __init__(self, model, num_blocks: int, block_size: int, device: torch.device, dtype: torch.dtype,
                 structured_output: StructuredOutputManager):
        self.model, self.device, self.dtype = model, torch.device(device), dtype
        self.structured_output = structured_output
        self.block_size, self.num_blocks = block_size, num_blocks
        self.vocab_size = model.config.text.vocab_size
        self.sampler = Sampler()
        self.generators: dict[int, torch.Generator] = {}
        self.num_images_encoded = 0
        self._allocate_kv_cache()

    def _allocate_kv_cache(self) -> None:
        """One pool, block-major: a block holds block_size tokens of every self-attention layer, or a slice of an
        image's cross-attention K/V (the pool seen as rows [rows, kv_heads, head_dim], rows_per_block per block)."""
        text = self.model.config.text
        layers = self.model.self_attention_layers
        shape = (self.num_blocks, len(layers), 2, self.block_size, text.num_key_value_heads, text.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        for i, layer in enumerate(layers):
            layer.bind_cache(self.kv_cache[:, i, 0], self.kv_cache[:, i, 1])
        self.vision_kv_pool = self.kv_cache.view(-1, text.num_key_value_heads, text.head_dim)
        self.rows_per_block = len(layers) * 2 * self.block_size

    @staticmethod
    def kv_bytes_per_block(config, block_size: int, dtype: torch.dtype) -> int:
        text = config.text
        num_layers = len(text.self_attention_layers)
        elem = torch.empty((), dtype=dtype).element_size()
        return num_layers * 2 * block_size * text.num_key_value_heads * text.head_dim * elem

    @staticmethod
    def blocks_per_image(config, block_size: int) -> int:
        """Blocks one image's K and V take for every cross-attention layer (padded tiles included)."""
        rows = 2 * len(config.text.cross_attention_layers) * ModelRunner.vision_tokens_per_image(config)
        return -(-rows // (len(config.text.self_attention_layers) * 2 * block_size))

    @staticmethod
    def vision_tokens_per_image(config) -> int:
        return config.vision.max_num_tiles * config.vision.num_patches

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> StepResult:
        """Compute the batch's new tokens; sample for the sequences whose last token is among them."""
        input_ids, positions, metadata = self._prepare(batch.seqs, batch.num_new_tokens)
        ends = metadata.query_start_loc[1:]
        done = [i for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens))
                if seq.num_computed_tokens + n == seq.num_tokens]
        hidden = self.model(input_ids, positions, metadata)
        if not done:
            return StepResult([], [], [])
        logits = self.model.compute_logits(hidden[self._tensor([ends[i] - 1 for i in done])])
        return self._sample([batch.seqs[i] for i in done], logits)

    @torch.inference_mode()
    def prefill_logits(self, seq: Sequence) -> torch.Tensor:
        """Logits [new tokens, vocab] at every position a prefill of `seq` computes."""
        input_ids, positions, metadata = self._prepare([seq], [seq.num_uncomputed_tokens])
        return self.model.compute_logits(self.model(input_ids, positions, metadata))

    def release(self, seq: Sequence) -> None:
        self.generators.pop(seq.seq_id, None)

    def _prepare(self, seqs: list[Sequence], num_new_tokens: list[int]):
        input_ids, positions, slots, query_start_loc, cross = [], [], [], [0], []
        for seq, num_new in zip(seqs, num_new_tokens):
            start = seq.num_computed_tokens
            seq_positions = list(range(start, start + num_new))
            input_ids.extend(seq.token_ids_between(start, start + num_new))
            positions.extend(seq_positions)
            slots.extend(seq.block_table[p // self.block_size] * self.block_size + p % self.block_size
                         for p in seq_positions)
            query_start_loc.append(len(input_ids))
            cross.append(self._cross_inputs(seq, seq_positions) if seq.multimodal else None)
        max_blocks = max(len(seq.block_table) for seq in seqs)
        block_tables = [seq.block_table + [0] * (max_blocks - len(seq.block_table)) for seq in seqs]
        metadata = AttentionMetadata(
            query_start_loc=query_start_loc,
            seq_lens=[seq.num_computed_tokens + n for seq, n in zip(seqs, num_new_tokens)],
            block_tables=self._tensor(block_tables),
            slot_mapping=self._tensor(slots),
            cross=cross,
            cross_mlp_scale=self._cross_mlp_scale(cross, num_new_tokens),
            vision_kv_pool=self.vision_kv_pool,
        )
        return self._tensor(input_ids), self._tensor(positions), metadata

    def _cross_mlp_scale(self, cross: list[SeqCrossInputs | None], num_new_tokens: list[int]) -> torch.Tensor | None:
        """[T, 1] over the flat batch: 1 for rows that see an image, 0 elsewhere; None when no row has images."""
        if all(c is None for c in cross):
            return None
        return torch.cat([c.mlp_row_scale if c is not None
                          else torch.zeros(n, 1, dtype=self.dtype, device=self.device)
                          for c, n in zip(cross, num_new_tokens)])

    def _tensor(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=self.device)

    def _cross_inputs(self, seq: Sequence, positions: list[int]) -> SeqCrossInputs:
        for index, entry in enumerate(seq.image_entries):
            if not entry.encoded:
                self._encode_image(seq.multimodal, index, entry.block_ids)
                entry.encoded = True
        mask, attn_row_scale, mlp_row_scale = self._cross_mask(seq.multimodal, positions, seq.num_prompt_tokens)
        return SeqCrossInputs(self._vision_kv_rows(seq), mask, attn_row_scale, mlp_row_scale)

    def _encode_image(self, mm: MultiModalInputs, index: int, block_ids: list[int]) -> None:
        """Run the vision encoder on one image (alone, so its K/V never depend on what it was batched with) and
        write its K/V for every cross-attention layer into its blocks."""
        kv = self.model.encode_images(
            mm.pixel_values[index : index + 1].to(self.device, self.dtype),
            mm.aspect_ratio_ids[index : index + 1].to(self.device),
            mm.aspect_ratio_mask[index : index + 1].to(self.device),
        )
        rows = torch.cat([tensor for layer in sorted(kv) for tensor in kv[layer]])  # [2 * layers * V, heads, d]
        self.vision_kv_pool[self._image_rows(block_ids)[: rows.shape[0]]] = rows
        self.num_images_encoded += 1

    def _image_rows(self, block_ids: list[int]) -> torch.Tensor:
        """Pool rows of an image's blocks, in order."""
        offsets = torch.arange(self.rows_per_block, device=self.device)
        return (self._tensor(block_ids)[:, None] * self.rows_per_block + offsets).flatten()

    def _vision_kv_rows(self, seq: Sequence) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per cross-attention layer, the pool rows of the sequence's vision K and V, its images concatenated."""
        num_tokens = self.vision_tokens_per_image(self.model.config)
        image_rows = [self._image_rows(entry.block_ids) for entry in seq.image_entries]
        kv_rows = {}
        for c, layer in enumerate(sorted(self.model.config.text.cross_attention_layers)):
            k_start, v_start = 2 * c * num_tokens, (2 * c + 1) * num_tokens
            kv_rows[layer] = (torch.cat([rows[k_start : k_start + num_tokens] for rows in image_rows]),
                              torch.cat([rows[v_start : v_start + num_tokens] for rows in image_rows]))
        return kv_rows

    def _cross_mask(self, mm: MultiModalInputs, positions: list[int], prompt_len: int):
        """Which vision tokens each new token sees; generated tokens see what the last prompt token saw.

        Returns the mask [q, vision_tokens] and the attention and MLP row scales [q, 1].
        """
        num_patches = self.model.config.vision.num_patches
        max_tiles = mm.pixel_values.shape[1]
        pos = self._tensor(positions).clamp(max=prompt_len - 1)[:, None]  # [q, 1]
        starts = self._tensor([r[0] for r in mm.token_ranges])[None, :]
        ends = self._tensor([r[1] for r in mm.token_ranges])[None, :]
        sees_image = (pos >= starts) & (pos < ends)  # [q, images]
        real_tile = torch.arange(max_tiles, device=self.device)[None, :] < self._tensor(mm.num_tiles)[:, None]
        mask = sees_image[:, :, None, None] & real_tile[None, :, :, None]
        mask = mask.expand(-1, -1, -1, num_patches).reshape(len(positions), -1)  # [q, images*tiles*patches]
        sees_any = sees_image.any(dim=1, keepdim=True)
        # A row that sees no image attends to everything (no NaN); its output is then kept (transformers 5.x)
        # or zeroed (Meta's reference).
        mask = mask | ~sees_any
        row_scale = sees_any.to(self.dtype)
        attn_row_scale = torch.ones_like(row_scale) if self.model.transformers_compat else row_scale
        return mask, attn_row_scale, row_scale

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> StepResult:
        metadata = SamplingMetadata.build(
            [seq.params for seq in seqs],
            [seq.prompt_token_ids for seq in seqs],
            [seq.output_token_ids for seq in seqs],
            [self._generator(seq) for seq in seqs],
            self.vocab_size,
            self.device,
            banned_token_ids=[self._banned_tokens(seq) for seq in seqs],
        )
        metadata.banned_mask = self._with_grammar_mask(seqs, metadata.banned_mask)
        out = self.sampler(logits, metadata)
        token_ids = out.sampled_token_ids.tolist()
        return StepResult(seqs, token_ids, self._logprobs(seqs, token_ids, out.logprobs))

    def _generator(self, seq: Sequence) -> torch.Generator | None:
        """A per-sequence generator when the request is seeded: its draws depend on nothing else."""
        if seq.params.seed is None:
            return None
        if seq.seq_id not in self.generators:
            generator = torch.Generator(device=self.device)
            generator.manual_seed((seq.params.seed * 1_000_003 + seq.index) % (1 << 63))
            self.generators[seq.seq_id] = generator
        return self.generators[seq.seq_id]

    def _with_grammar_mask(self, seqs: list[Sequence], banned: torch.Tensor | None) -> torch.Tensor | None:
        """The step's [B, V] banned mask plus what each constrained row's grammar forbids. Where min_tokens bans the
        stop tokens that are all the grammar still allows, the grammar wins: its output must stay valid."""
        grammar = self.structured_output.banned_mask([seq.seq_id for seq in seqs], self.device)
        if grammar is None or banned is None:
            return banned if grammar is None else grammar
        combined = banned | grammar
        return torch.where(combined.all(dim=-1, keepdim=True), grammar, combined)

    @staticmethod
    def _banned_tokens(seq: Sequence) -> list[int]:
        return list(seq.stop_token_ids) if len(seq.output_token_ids) < seq.params.min_tokens else []

    @staticmethod
    def _logprobs(seqs: list[Sequence], token_ids: list[int], logprobs) -> list[dict[int, float] | None]:
        if logprobs is None:
            return [None] * len(seqs)
        sampled, top_ids, top_values = (t.tolist() for t in logprobs)
        result = []
        for i, seq in enumerate(seqs):
            k = seq.params.logprobs
            if k is None:
                result.append(None)
                continue
            entry = dict(zip(top_ids[i][:k], top_values[i][:k]))
            entry[token_ids[i]] = sampled[i]
            result.append(entry)
        return result
