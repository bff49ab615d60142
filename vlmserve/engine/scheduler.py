"""Decides which sequences run in the next step and how many of their tokens. Pure Python (no torch).

One token budget per step is shared by everyone: running sequences go first (a decode costs one token, a
prompt being prefilled in chunks takes what is left of it), then waiting ones are admitted while budget,
blocks and the sequence limit allow. A long prompt is thus prefilled over several steps while decodes keep
running. When blocks run out, the lowest-ranked running sequence is preempted by recompute: its blocks are freed
and it goes back to the queue, to be prefilled again (prompt and outputs so far) later.

Sequences are ranked by `Sequence.rank`: interactive before background (batch lines), then by priority (lower
first, vLLM's convention), then by arrival. The queue is kept in rank order, and a waiting sequence that cannot be
admitted (no free slot or blocks) preempts running ones of a lower rank, so a batch filling the engine costs an
interactive request a step or two, not the time a batch line takes to finish.

The scheduler is the one writer of `Sequence.num_computed_tokens`: it counts the cached prefix the block manager
reports when a sequence is admitted, advances it by the batch once a step has run (`update`), and zeroes it when
a sequence loses its blocks (preempted, finished).
"""

import bisect
import operator
from dataclasses import dataclass

from vlmserve.engine.block_manager import BlockManager
from vlmserve.engine.sequence import Sequence, SequenceStatus
from vlmserve.engine.step_data import ScheduledBatch

_rank = operator.attrgetter("rank")


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager):
        self.config = config
        self.block_manager = block_manager
        self.waiting: list[Sequence] = []  # in rank order
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        bisect.insort(self.waiting, seq, key=_rank)

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
        """Give every running sequence its next tokens, best-ranked first (they take the budget first), preempting
        the lowest-ranked when blocks run out."""
        preempted = False
        for seq in sorted(self.running, key=_rank):
            budget = self.config.max_num_batched_tokens - batch.num_tokens
            if seq not in self.running or budget == 0:
                continue
            num_new = min(seq.num_uncomputed_tokens, budget)
            target = seq.num_computed_tokens + num_new
            while seq in self.running and not self.block_manager.can_allocate(seq, target):
                self._preempt(self._lowest_running(), batch)
                preempted = True
            if seq in self.running:
                self.block_manager.allocate(seq, target)
                batch.add(seq, num_new)
        return preempted

    def _schedule_waiting(self, batch: ScheduledBatch) -> None:
        while self.waiting:
            budget = self.config.max_num_batched_tokens - batch.num_tokens
            if budget == 0:
                return
            seq = self.waiting[0]
            hits = self.block_manager.cached_prefix(seq)
            num_computed = seq.num_computed_tokens + len(hits) * self.block_manager.block_size
            target = num_computed + min(seq.num_tokens - num_computed, budget)
            if not self._make_room(seq, target, hits, batch):
                return
            self.waiting.pop(0)
            seq.num_computed_tokens += self.block_manager.allocate(seq, target, hits)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.add(seq, target - seq.num_computed_tokens)

    def _make_room(self, seq: Sequence, target: int, hits: list, batch: ScheduledBatch) -> bool:
        """Whether `seq` can be admitted up to `target` tokens, after preempting running sequences ranked below it
        (taking them out of this step's batch) where it lacks a slot or blocks."""
        while (len(self.running) >= self.config.max_num_seqs
               or not self.block_manager.can_allocate(seq, target, hits)):
            victim = self._lowest_running()
            if victim is None or _rank(victim) < _rank(seq):
                return False
            self._preempt(victim, batch)
        return True

    def _lowest_running(self) -> Sequence | None:
        return max(self.running, key=_rank, default=None)

    def update(self, batch: ScheduledBatch) -> None:
        """After the batch's step ran: its sequences' new tokens are computed (their K/V are in the cache)."""
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += num_new

    def _free(self, seq: Sequence) -> None:
        """Drop the sequence's blocks: it must recompute from scratch (minus cache hits) if it runs again."""
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        """Back to the queue, out of this step's batch if it was in it (a lower-ranked one scheduled earlier)."""
        batch.remove(seq)
        self.running.remove(seq)
        self._free(seq)
        seq.status = SequenceStatus.WAITING
        bisect.insort(self.waiting, seq, key=_rank)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """Release a finished or aborted sequence's blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._free(seq)
        seq.status = SequenceStatus.FINISHED
