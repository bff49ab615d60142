"""The one place a step's tensors are made: inputs, slot mapping, block tables, cross-attention inputs; then
forward + sample."""

import logging
from collections.abc import Callable

import torch

from vlmserve.engine.cuda_graphs import DecodeGraphs, Forward
from vlmserve.engine.early_fusion_state import EarlyFusionState
from vlmserve.engine.sampler import Sampler, SamplingMetadata
from vlmserve.engine.sequence import Sequence
from vlmserve.engine.step_data import ForwardStep, ScheduledBatch, StepResult
from vlmserve.engine.structured_output import StructuredOutputManager
from vlmserve.engine.vision_state import VisionState
from vlmserve.layers.attention_metadata import AttentionMetadata

logger = logging.getLogger("vlmserve.engine")


class ModelRunner:
    """Rank 0 plans each step from the scheduled sequences, hands it to `send_step` (the executor broadcasts it to
    the other ranks; nothing on one rank) and executes it; only rank 0 samples. Other ranks only `execute`."""

    def __init__(self, model, num_blocks: int, block_size: int, device: torch.device, dtype: torch.dtype,
                 structured_output: StructuredOutputManager | None,
                 vision_state: type[VisionState] | type[EarlyFusionState] = VisionState,
                 send_step: Callable[[ForwardStep], None] | None = None):
        self.model, self.device, self.dtype = model, torch.device(device), dtype
        self.send_step = send_step
        self.vision_state = vision_state
        self.structured_output = structured_output
        self.block_size, self.num_blocks = block_size, num_blocks
        self.vocab_size = model.config.text.vocab_size
        self.sampler = Sampler()
        self.graphs: DecodeGraphs | None = None  # decode steps' CUDA graphs, once captured
        self.generators: dict[int, torch.Generator] = {}
        self.prompt_tensors: dict[int, torch.Tensor] = {}
        self._allocate_kv_cache()

    def _allocate_kv_cache(self) -> None:
        """One pool, block-major: a block holds block_size tokens of every self-attention layer, or a slice of an
        image's cross-attention K/V (the pool seen as rows [rows, kv_heads, head_dim], rows_per_block per block).
        Llama 4's chunked-attention layers keep every position too: attention reads only the current chunk's."""
        text = self.model.config.text
        layers = self.model.self_attention_layers
        num_kv_heads = layers[0].num_kv_heads  # this rank's share under tensor parallelism
        shape = (self.num_blocks, len(layers), 2, self.block_size, num_kv_heads, text.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        for i, layer in enumerate(layers):
            layer.bind_cache(self.kv_cache[:, i, 0], self.kv_cache[:, i, 1])
        pool_rows = self.kv_cache.view(-1, num_kv_heads, text.head_dim)
        self.vision = self.vision_state(self.model, pool_rows, len(layers) * 2 * self.block_size, self.device,
                                        self.dtype)

    @staticmethod
    def kv_bytes_per_block(config, block_size: int, dtype: torch.dtype, num_kv_heads: int | None = None) -> int:
        """Bytes of one block; `num_kv_heads` is a rank's share under tensor parallelism (default: all)."""
        text = config.text
        num_layers = len(text.self_attention_layers)
        elem = torch.empty((), dtype=dtype).element_size()
        return num_layers * 2 * block_size * (num_kv_heads or text.num_key_value_heads) * text.head_dim * elem

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> StepResult:
        """Compute the batch's new tokens; sample for the sequences whose last token is among them."""
        done = [i for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens))
                if seq.num_computed_tokens + n == seq.num_tokens]
        step = self._plan(batch.seqs, batch.num_new_tokens, done)
        if not done:
            self._send_and_execute(step)
            return StepResult([], [], [])
        seqs = [batch.seqs[i] for i in done]
        try:  # its host-to-device copies go before the forward, not after
            sampling = self._sampling_metadata(seqs)
        except Exception:  # noqa: BLE001 - some row cannot be sampled; _sample finds which, after the forward
            sampling = None
        return self._sample(seqs, self._send_and_execute(step), sampling)

    @torch.inference_mode()
    def prefill_logits(self, seq: Sequence) -> torch.Tensor:
        """Logits [new tokens, vocab] at every position a prefill of `seq` computes."""
        return self._send_and_execute(self._plan([seq], [seq.num_uncomputed_tokens], None))

    @torch.inference_mode()
    def execute(self, step: ForwardStep) -> torch.Tensor | None:
        """Run a planned step on this rank: its images, the forward, then logits at `step.logit_rows` (None when
        there are none). Every rank calls this with the same step, so collectives inside meet in lockstep."""
        if self.graphs is not None and self.graphs.can_replay(step):
            return self.model.compute_logits(self.graphs.replay(step))
        vision = self.vision.execute(step.vision)
        metadata = AttentionMetadata.build(
            query_start_loc=step.query_start_loc,
            seq_lens=step.seq_lens,
            block_tables=self._tensor(step.block_tables),
            slot_mapping=self._tensor(step.slot_mapping),
            cross=vision.cross,
        )
        input_ids, positions = self._tensor(step.input_ids), self._tensor(step.positions)
        hidden = self.model(input_ids, positions, metadata, **vision.forward_kwargs())
        if step.logit_rows is None:
            return self.model.compute_logits(hidden)
        return self.model.compute_logits(hidden[self._tensor(step.logit_rows)]) if step.logit_rows else None

    @torch.inference_mode()
    def capture_decode_graphs(self, max_num_seqs: int, max_model_len: int,
                              capture: Callable[[Forward], Forward] | None = None) -> None:
        """Capture the decode steps' CUDA graphs (cuda_graphs.py); `capture` replaces torch.cuda.CUDAGraph."""
        self.graphs = DecodeGraphs(self.model, max_num_seqs, -(-max_model_len // self.block_size), self.device,
                                   capture)

    def _send_and_execute(self, step: ForwardStep) -> torch.Tensor | None:
        if self.send_step is not None:
            self.send_step(step)
        return self.execute(step)

    def release(self, seq: Sequence) -> None:
        """Forget everything kept here for a finished sequence: its generator, prompt tensor, image state and
        grammar matcher (idempotent)."""
        self.generators.pop(seq.seq_id, None)
        self.prompt_tensors.pop(seq.seq_id, None)
        self.vision.release(seq)
        if self.structured_output is not None:
            self.structured_output.release(seq.seq_id)

    def _plan(self, seqs: list[Sequence], num_new_tokens: list[int], logits_of: list[int] | None) -> ForwardStep:
        """The step that computes `num_new_tokens` of each sequence, with logits at the last new token of the
        sequences indexed by `logits_of` (None: at every new token)."""
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
        return ForwardStep(
            input_ids, positions, query_start_loc,
            seq_lens=[seq.num_computed_tokens + n for seq, n in zip(seqs, num_new_tokens)],
            block_tables=block_tables, slot_mapping=slots,
            vision=self.vision.plan(seqs, seq_positions, query_start_loc[:-1]),
            logit_rows=None if logits_of is None else [query_start_loc[i + 1] - 1 for i in logits_of])

    def _tensor(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=self.device)

    def _sampling_metadata(self, seqs: list[Sequence]) -> SamplingMetadata:
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
        return metadata

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor, metadata: SamplingMetadata | None) -> StepResult:
        """The step's one host sync: reading the sampled tokens. If the batch cannot be sampled, each row is sampled
        on its own, so that only the rows that raise fail (seeded rows draw again from where they stood)."""
        if metadata is not None:
            seeded = [seq.seq_id for seq in seqs if seq.params.seed is not None]
            states = {seq_id: self.generators[seq_id].get_state() for seq_id in seeded}
            try:
                return self._sample_rows(seqs, logits, metadata)
            except Exception:  # noqa: BLE001 - logged, then isolated row by row
                logger.warning("sampling a batch of %d failed; sampling its rows one by one", len(seqs), exc_info=True)
                for seq_id, state in states.items():
                    self.generators[seq_id].set_state(state)
        result = StepResult([], [], [])
        for row, seq in enumerate(seqs):
            try:
                one = self._sample_rows([seq], logits[row:row + 1], self._sampling_metadata([seq]))
            except Exception as error:  # noqa: BLE001 - fails this sequence's request alone
                result.failed.append((seq, error))
                continue
            result.seqs.append(seq)
            result.token_ids += one.token_ids
            result.logprobs += one.logprobs
        return result

    def _sample_rows(self, seqs: list[Sequence], logits: torch.Tensor, metadata: SamplingMetadata) -> StepResult:
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
