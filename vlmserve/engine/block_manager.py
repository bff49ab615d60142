"""Hands out fixed-size KV-cache blocks to sequences. Pure Python (no torch)."""

from collections import deque

from vlmserve.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks, self.block_size = num_blocks, block_size
        self.free_block_ids: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    def can_allocate(self, seq: Sequence) -> bool:
        """Enough free blocks to hold every token the sequence has (prompt, outputs, the one being fed)."""
        return seq.num_blocks_needed(self.block_size) - len(seq.block_table) <= self.num_free_blocks

    def allocate(self, seq: Sequence) -> None:
        """Give the sequence enough blocks for all its current tokens."""
        while len(seq.block_table) < seq.num_blocks_needed(self.block_size):
            seq.block_table.append(self.free_block_ids.popleft())

    def free(self, seq: Sequence) -> None:
        self.free_block_ids.extend(reversed(seq.block_table))
        seq.block_table = []
        seq.num_cached_tokens = 0
