"""The one place a step's tensors are made: inputs, slot mapping, block tables, cross-attention inputs; then
forward + sample."""

from dataclasses import dataclass

import torch

from vlmserve.engine.sampler import Sampler, SamplingMetadata
from vlmserve.engine.scheduler import ScheduledBatch
from vlmserve.engine.structured_output import StructuredOutputManager
from vlmserve.engine.sequence import Sequence
from vlmserve.engine.early_fusion_state import EarlyFusionState
from vlmserve.engine.vision_state import VisionState
from vlmserve.layers.attention_metadata import AttentionMetadata


@dataclass
class StepResult:
    """The sequences whose step reached their last token, each with its sampled token (and logprobs)."""

    seqs: list[Sequence]
    token_ids: list[int]
    logprobs: list[dict[int, float] | None]  # per sequence: sampled + top tokens, when asked for


class ModelRunner:
    def __init__(self, model, num_blocks: int, block_size: int, device: torch.device, dtype: torch.dtype,
                 structured_output: StructuredOutputManager,
                 vision_state: type[VisionState] | type[EarlyFusionState] = VisionState):
        self.model, self.device, self.dtype = model, torch.device(device), dtype
        self.vision_state = vision_state
        self.structured_output = structured_output
        self.block_size, self.num_blocks = block_size, num_blocks
        self.vocab_size = model.config.text.vocab_size
        self.sampler = Sampler()
        self.generators: dict[int, torch.Generator] = {}
        self.prompt_tensors: dict[int, torch.Tensor] = {}
        self._allocate_kv_cache()

    def _allocate_kv_cache(self) -> None:
        """One pool, block-major: a block holds block_size tokens of every self-attention layer, or a slice of an
        image's cross-attention K/V (the pool seen as rows [rows, kv_heads, head_dim], rows_per_block per block).
        Llama 4's chunked-attention layers keep every position too: attention reads only the current chunk's."""
        text = self.model.config.text
        layers = self.model.self_attention_layers
        shape = (self.num_blocks, len(layers), 2, self.block_size, text.num_key_value_heads, text.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        for i, layer in enumerate(layers):
            layer.bind_cache(self.kv_cache[:, i, 0], self.kv_cache[:, i, 1])
        pool_rows = self.kv_cache.view(-1, text.num_key_value_heads, text.head_dim)
        self.vision = self.vision_state(self.model, pool_rows, len(layers) * 2 * self.block_size, self.device,
                                        self.dtype)

    @staticmethod
    def kv_bytes_per_block(config, block_size: int, dtype: torch.dtype) -> int:
        text = config.text
        num_layers = len(text.self_attention_layers)
        elem = torch.empty((), dtype=dtype).element_size()
        return num_layers * 2 * block_size * text.num_key_value_heads * text.head_dim * elem

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> StepResult:
        """Compute the batch's new tokens; sample for the sequences whose last token is among them."""
        input_ids, positions, metadata, vision = self._prepare(batch.seqs, batch.num_new_tokens)
        ends = metadata.query_start_loc[1:]
        done = [i for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens))
                if seq.num_computed_tokens + n == seq.num_tokens]
        hidden = self.model(input_ids, positions, metadata, **vision.forward_kwargs())
        if not done:
            return StepResult([], [], [])
        logits = self.model.compute_logits(hidden[self._tensor([ends[i] - 1 for i in done])])
        return self._sample([batch.seqs[i] for i in done], logits)

    @torch.inference_mode()
    def prefill_logits(self, seq: Sequence) -> torch.Tensor:
        """Logits [new tokens, vocab] at every position a prefill of `seq` computes."""
        input_ids, positions, metadata, vision = self._prepare([seq], [seq.num_uncomputed_tokens])
        return self.model.compute_logits(self.model(input_ids, positions, metadata, **vision.forward_kwargs()))

    def release(self, seq: Sequence) -> None:
        self.generators.pop(seq.seq_id, None)
        self.prompt_tensors.pop(seq.seq_id, None)
        self.vision.release(seq)

    def _prepare(self, seqs: list[Sequence], num_new_tokens: list[int]):
        input_ids, positions, slots, query_start_loc, seq_positions = [], [], [], [0], []
        for seq, num_new in zip(seqs, num_new_tokens):
            start = seq.num_computed_tokens
            seq_positions.append(list(range(start, start + num_new)))
            input_ids.extend(seq.token_ids_between(start, start + num_new))
            positions.extend(seq_positions[-1])
            slots.extend(seq.block_table[p // self.block_size] * self.block_size + p % self.block_size
                         for p in seq_positions[-1])
            query_start_loc.append(len(input_ids))
        max_blocks = max(len(seq.block_table) for seq in seqs)
        block_tables = [seq.block_table + [0] * (max_blocks - len(seq.block_table)) for seq in seqs]
        vision = self.vision.step_inputs(seqs, seq_positions, query_start_loc[:-1])
        metadata = AttentionMetadata(
            query_start_loc=query_start_loc,
            seq_lens=[seq.num_computed_tokens + n for seq, n in zip(seqs, num_new_tokens)],
            block_tables=self._tensor(block_tables),
            slot_mapping=self._tensor(slots),
            cross=vision.cross,
        )
        return self._tensor(input_ids), self._tensor(positions), metadata, vision

    def _tensor(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=self.device)

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> StepResult:
        metadata = SamplingMetadata.build(
            [seq.params for seq in seqs],
            [self._prompt_tensor(seq) for seq in seqs],
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

    def _prompt_tensor(self, seq: Sequence) -> torch.Tensor:
        """The prompt's ids as a tensor, made once per sequence: the repetition penalty reads them every step."""
        if seq.seq_id not in self.prompt_tensors:
            self.prompt_tensors[seq.seq_id] = self._tensor(seq.prompt_token_ids)
        return self.prompt_tensors[seq.seq_id]

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
