"""Vocabulary-parallel token embedding and LM head: rank r holds rows [r * ceil(V/N), (r+1) * ceil(V/N)) of the
vocabulary, zero rows past its end (the layout of vlmserve/distributed/sharding.py). On one rank they are exactly
nn.Embedding and a bias-free nn.Linear."""

import torch
import torch.nn.functional as F
from torch import nn

from vlmserve.distributed.parallel_state import SINGLE, TensorParallel
from vlmserve.distributed.sharding import VOCAB


class _VocabRows(nn.Module):
    def __init__(self, num_embeddings: int, hidden_size: int, tp: TensorParallel):
        super().__init__()
        self.num_embeddings, self.tp = num_embeddings, tp
        self.rows_per_rank = -(-num_embeddings // tp.size)
        self.weight = nn.Parameter(torch.empty(self.rows_per_rank, hidden_size))
        self.shard_specs = {"weight": VOCAB}


class VocabParallelEmbedding(_VocabRows):
    def __init__(self, num_embeddings: int, hidden_size: int, tp: TensorParallel = SINGLE):
        super().__init__(num_embeddings, hidden_size, tp)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """ids [...] -> [..., hidden]: each rank embeds the ids in its rows, zeros the others; the sum is the lookup."""
        if self.tp.size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.tp.rank * self.rows_per_rank
        outside = (local < 0) | (local >= self.rows_per_rank)
        x = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.tp.all_reduce(x.masked_fill(outside.unsqueeze(-1), 0))


class ParallelLMHead(_VocabRows):
    def __init__(self, hidden_size: int, vocab_size: int, tp: TensorParallel = SINGLE):
        super().__init__(vocab_size, hidden_size, tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, hidden] -> logits [T, vocab] over the whole vocabulary, on every rank (the padding rows cut off)."""
        logits = F.linear(x, self.weight)
        if self.tp.size == 1:
            return logits
        return self.tp.all_gather(logits)[..., : self.num_embeddings]
