"""Block manager and scheduler: pure-Python bookkeeping, no model."""

from vlmserve.engine.block_manager import BlockManager
from vlmserve.engine.scheduler import Scheduler, SchedulerConfig
from vlmserve.engine.sequence import Sequence, SequenceStatus
from vlmserve.sampling_params import SamplingParams


def make_seq(num_prompt: int, request_id: str = "r") -> Sequence:
    return Sequence(Sequence.next_id(), request_id, list(range(num_prompt)), SamplingParams())


def test_block_manager_allocates_ceil_blocks_and_frees_them():
    manager = BlockManager(num_blocks=10, block_size=4)
    seq = make_seq(9)
    assert manager.can_allocate(seq)
    manager.allocate(seq)
    assert len(seq.block_table) == 3 and manager.num_free_blocks == 7
    seq.output_token_ids += [1, 2, 3]  # 12 tokens still fit in 3 blocks
    manager.allocate(seq)
    assert len(seq.block_table) == 3
    seq.output_token_ids.append(4)  # the 13th token needs a 4th block
    manager.allocate(seq)
    assert len(seq.block_table) == 4 and manager.num_free_blocks == 6
    manager.free(seq)
    assert manager.num_free_blocks == 10 and seq.block_table == []


def test_prefills_respect_token_budget_then_decode_everything():
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=10), BlockManager(100, 4))
    seqs = [make_seq(6, f"r{i}") for i in range(3)]
    for seq in seqs:
        scheduler.add(seq)
    first, is_prefill = scheduler.schedule()
    assert is_prefill and first == seqs[:1]  # a second 6-token prompt would exceed 10 tokens
    second, _ = scheduler.schedule()
    assert second == seqs[1:2]
    third, _ = scheduler.schedule()
    assert third == seqs[2:3]
    decode, is_prefill = scheduler.schedule()
    assert not is_prefill and decode == seqs


def test_oversized_single_prompt_still_prefills_alone():
    scheduler = Scheduler(SchedulerConfig(max_num_batched_tokens=4), BlockManager(100, 4))
    seq = make_seq(9)
    scheduler.add(seq)
    assert scheduler.schedule() == ([seq], True)


def test_preemption_frees_blocks_and_requeues_newest_first():
    manager = BlockManager(num_blocks=4, block_size=4)
    scheduler = Scheduler(SchedulerConfig(), manager)
    old, new = make_seq(8, "old"), make_seq(8, "new")
    scheduler.add(old)
    scheduler.add(new)
    assert scheduler.schedule() == ([old, new], True)
    old.output_token_ids.append(1)  # both need a third block; only 0 free
    new.output_token_ids.append(1)
    decode, _ = scheduler.schedule()
    assert decode == [old]
    assert new.status is SequenceStatus.WAITING and new.block_table == []
    assert scheduler.waiting[0] is new and scheduler.num_preemptions == 1


def test_finish_releases_blocks_of_running_and_waiting():
    manager = BlockManager(num_blocks=8, block_size=4)
    scheduler = Scheduler(SchedulerConfig(), manager)
    running, waiting = make_seq(5, "a"), make_seq(5, "b")
    scheduler.add(running)
    scheduler.schedule()
    scheduler.add(waiting)
    scheduler.finish(running)
    scheduler.finish(waiting)
    assert manager.num_free_blocks == 8 and not scheduler.has_work
    assert running.is_finished and waiting.is_finished
