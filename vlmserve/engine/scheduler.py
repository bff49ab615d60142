"""Decides which sequences run in the next step. Pure Python (no torch).

Prefills go first (whole prompts, within the token and sequence budgets); otherwise every running sequence
decodes one token. When blocks run out, the newest running sequence is preempted by recompute: its blocks
are freed and it goes back to the front of the queue, to be prefilled again with its outputs so far.
"""

from collections import deque
from dataclasses import dataclass

from vlmserve.engine.block_manager import BlockManager
from vlmserve.engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 8192


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

    def schedule(self) -> tuple[list[Sequence], bool]:
        """Returns the step's sequences and whether the step is a prefill."""
        prefills = self._schedule_prefills()
        if prefills:
            return prefills, True
        return self._schedule_decodes(), False

    def _schedule_prefills(self) -> list[Sequence]:
        scheduled, num_tokens = [], 0
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            too_many_tokens = num_tokens + seq.num_tokens > self.config.max_num_batched_tokens
            if (scheduled and too_many_tokens) or not self.block_manager.can_allocate(seq):
                break
            self.waiting.popleft()
            self.block_manager.allocate(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(seq)
            num_tokens += seq.num_tokens
        return scheduled

    def _schedule_decodes(self) -> list[Sequence]:
        scheduled = []
        for seq in list(self.running):
            while seq in self.running and not self.block_manager.can_allocate(seq):
                self._preempt(self.running[-1])
            if seq in self.running:
                self.block_manager.allocate(seq)
                scheduled.append(seq)
        return scheduled

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """Release a finished or aborted sequence's blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
