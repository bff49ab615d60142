"""Decides which sequences run in the next step and how many of their tokens. Pure Python (no torch).

One token budget per step is shared by everyone: running sequences go first (a decode costs one token, a
prompt being prefilled in chunks takes what is left of it), then waiting ones are admitted while budget,
blocks and the sequence limit allow. A long prompt is thus prefilled over several steps while decodes keep
running. When blocks run out, the newest running sequence is preempted by recompute: its blocks are freed and
it goes back to the front of the queue, to be prefilled again (prompt and outputs so far) later.

The scheduler is the one writer of `Sequence.num_computed_tokens`: it counts the cached prefix the block manager
reports when a sequence is admitted, advances it by the batch once a step has run (`update`), and zeroes it when
a sequence loses its blocks (preempted, finished).
"""

from collections import deque
from dataclasses import dataclass

from vlmserve.engine.block_manager import BlockManager
from vlmserve.engine.sequence import Sequence, SequenceStatus
from vlmserve.engine.step_data import ScheduledBatch


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager):
        self.config = config
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        preempted = self._schedule_running(batch)
        if not preempted:
            self._schedule_waiting(batch)
        return batch

    def _schedule_running(self, batch: ScheduledBatch) -> bool:
        """Give every running sequence its next tokens, preempting from the back when blocks run out."""
        preempted = False
        for seq in list(self.running):
            budget = self.config.max_num_batched_tokens - batch.num_tokens
            if seq not in self.running or budget == 0:
                continue
            num_new = min(seq.num_uncomputed_tokens, budget)
            target = seq.num_computed_tokens + num_new
            while seq in self.running and not self.block_manager.can_allocate(seq, target):
                self._preempt(self.running[-1])
                preempted = True
            if seq in self.running:
                self.block_manager.allocate(seq, target)
                batch.add(seq, num_new)
        return preempted

    def _schedule_waiting(self, batch: ScheduledBatch) -> None:
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            budget = self.config.max_num_batched_tokens - batch.num_tokens
            if budget == 0:
                return
            seq = self.waiting[0]
            hits = self.block_manager.cached_prefix(seq)
            num_computed = seq.num_computed_tokens + len(hits) * self.block_manager.block_size
            target = num_computed + min(seq.num_tokens - num_computed, budget)
            if not self.block_manager.can_allocate(seq, target, hits):
                return
            self.waiting.popleft()
            seq.num_computed_tokens += self.block_manager.allocate(seq, target, hits)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.add(seq, target - seq.num_computed_tokens)

    def update(self, batch: ScheduledBatch) -> None:
        """After the batch's step ran: its sequences' new tokens are computed (their K/V are in the cache)."""
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += num_new

    def _free(self, seq: Sequence) -> None:
        """Drop the sequence's blocks: it must recompute from scratch (minus cache hits) if it runs again."""
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._free(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """Release a finished or aborted sequence's blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._free(seq)
        seq.status = SequenceStatus.FINISHED
