"""Drives a model the way the engine's model runner does: a paged KV cache bound to each self-attention layer,
scattered physical blocks, one flat batch of sequences per step with its AttentionMetadata, greedy decoding one
token per step."""

from dataclasses import dataclass, field

import torch

from vlmserve.layers.attention_metadata import AttentionMetadata

BLOCK_SIZE = 4


@dataclass
class PagedSequence:
    token_ids: list[int]
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0


class PagedHarness:
    """Binds fresh caches to the model's layers: a new harness ends the previous one's use of that model."""

    def __init__(self, model, num_blocks: int = 96, seed: int = 0):
        self.model = model
        dtype = next(model.parameters()).dtype
        for layer in model.self_attention_layers:
            shape = (num_blocks, BLOCK_SIZE, layer.num_kv_heads, layer.head_dim)  # this rank's kv heads
            layer.bind_cache(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))
        self.free_blocks = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).tolist()

    @torch.inference_mode()
    def step(self, seqs: list[PagedSequence], num_new: list[int], image_embeds=None) -> torch.Tensor:
        """Compute the next num_new tokens of each sequence in one forward -> logits [sum(num_new), vocab]."""
        input_ids, positions, slots, query_start_loc = [], [], [], [0]
        for seq, n in zip(seqs, num_new):
            new = range(seq.num_computed, seq.num_computed + n)
            while len(seq.block_table) * BLOCK_SIZE < new.stop:
                seq.block_table.append(self.free_blocks.pop())
            input_ids += seq.token_ids[new.start : new.stop]
            positions += new
            slots += [seq.block_table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in new]
            query_start_loc.append(len(input_ids))
        width = max(len(seq.block_table) for seq in seqs)
        metadata = AttentionMetadata.build(
            query_start_loc=query_start_loc,
            seq_lens=[seq.num_computed + n for seq, n in zip(seqs, num_new)],
            block_tables=torch.tensor([seq.block_table + [0] * (width - len(seq.block_table)) for seq in seqs]),
            slot_mapping=torch.tensor(slots),
        )
        hidden = self.forward(torch.tensor(input_ids), torch.tensor(positions), metadata, image_embeds)
        for seq, n in zip(seqs, num_new):
            seq.num_computed += n
        return self.model.compute_logits(hidden)

    def forward(self, input_ids, positions, metadata: AttentionMetadata, image_embeds) -> torch.Tensor:
        return self.model(input_ids, positions, metadata, image_embeds)

    def prefill(self, token_ids: list[int], image_embeds=None) -> tuple[PagedSequence, torch.Tensor]:
        seq = PagedSequence(list(token_ids))
        return seq, self.step([seq], [len(token_ids)], image_embeds)

    def greedy(self, token_ids: list[int], image_embeds, max_new_tokens: int) -> list[int]:
        """Prefill the prompt, then decode max_new_tokens tokens one step at a time (argmax)."""
        return self.decode(*self.prefill(token_ids, image_embeds), max_new_tokens)

    def decode(self, seq: PagedSequence, logits: torch.Tensor, max_new_tokens: int) -> list[int]:
        """Greedy tokens after a step's logits, one step at a time."""
        start = len(seq.token_ids)
        while True:
            seq.token_ids.append(int(logits[-1].argmax()))
            if len(seq.token_ids) - start == max_new_tokens:
                return seq.token_ids[start:]
            logits = self.step([seq], [1])
