"""Scheduler: token budget, chunked prefill, prefix hits and preemption. Pure Python, no model."""

from vlmserve.config import EngineConfig
from vlmserve.engine.block_manager import BlockManager
from vlmserve.engine.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from vlmserve.engine.sequence import Sequence, SequenceStatus
from vlmserve.sampling_params import SamplingParams


def scheduler_config(**fields) -> SchedulerConfig:
    """The engine's defaults (SchedulerConfig has none of its own), with `fields` changed."""
    defaults = {"max_num_seqs": EngineConfig.max_num_seqs,
                "max_num_batched_tokens": EngineConfig.max_num_batched_tokens, "max_model_len": 8192}
    return SchedulerConfig(**{**defaults, **fields})


def make_seq(num_prompt: int, request_id: str = "r", first_token: int = 0) -> Sequence:
    tokens = list(range(first_token, first_token + num_prompt))
    return Sequence(Sequence.next_id(), request_id, tokens, SamplingParams())


def complete(batch: ScheduledBatch) -> None:
    """What the engine does after a step: the tokens are computed; a sequence that reached its end samples."""
    for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
        seq.num_computed_tokens += num_new
        if seq.num_computed_tokens == seq.num_tokens:
            seq.output_token_ids.append(1)


def scheduled(batch: ScheduledBatch) -> list[tuple[Sequence, int]]:
    return list(zip(batch.seqs, batch.num_new_tokens))


def test_long_prompt_is_chunked_while_decodes_keep_running():
    scheduler = Scheduler(scheduler_config(max_num_batched_tokens=8), BlockManager(100, 4))
    short, long = make_seq(3, "short"), make_seq(20, "long", first_token=100)
    scheduler.add(short)
    scheduler.add(long)
    first = scheduler.schedule()
    assert scheduled(first) == [(short, 3), (long, 5)]
    complete(first)
    for expected_chunk in (7, 7, 1):  # the decode takes 1 token of the 8, the prompt the rest
        batch = scheduler.schedule()
        assert scheduled(batch) == [(short, 1), (long, expected_chunk)]
        complete(batch)
    assert long.output_token_ids == [1] and len(short.output_token_ids) == 4
    assert scheduled(scheduler.schedule()) == [(short, 1), (long, 1)]


def test_max_num_seqs_limits_admissions():
    scheduler = Scheduler(scheduler_config(max_num_seqs=2), BlockManager(100, 4))
    seqs = [make_seq(3, f"r{i}", first_token=10 * i) for i in range(3)]
    for seq in seqs:
        scheduler.add(seq)
    assert scheduler.schedule().seqs == seqs[:2] and list(scheduler.waiting) == seqs[2:]


def test_admission_takes_the_cached_prefix():
    manager = BlockManager(100, 4)
    scheduler = Scheduler(scheduler_config(), manager)
    first = make_seq(10)
    scheduler.add(first)
    complete(scheduler.schedule())
    second = make_seq(10, "again")
    scheduler.add(second)
    batch = scheduler.schedule()
    assert scheduled(batch) == [(first, 1), (second, 2)]  # 8 of its 10 tokens are cached
    assert second.block_table[:2] == first.block_table[:2]
    assert manager.stats.hit_tokens == 8


def test_preemption_frees_blocks_and_requeues_newest_first():
    manager = BlockManager(num_blocks=4, block_size=4)
    scheduler = Scheduler(scheduler_config(), manager)
    old, new = make_seq(8, "old"), make_seq(8, "new", first_token=100)
    scheduler.add(old)
    scheduler.add(new)
    complete(scheduler.schedule())  # both prefilled, each has a 9th token: both need a third block
    decode = scheduler.schedule()
    assert scheduled(decode) == [(old, 1)]
    assert new.status is SequenceStatus.WAITING and new.block_table == [] and new.num_computed_tokens == 0
    assert scheduler.waiting[0] is new and scheduler.num_preemptions == 1


def test_finish_releases_blocks_of_running_and_waiting():
    manager = BlockManager(num_blocks=8, block_size=4)
    scheduler = Scheduler(scheduler_config(), manager)
    running, waiting = make_seq(5, "a"), make_seq(5, "b")
    scheduler.add(running)
    scheduler.schedule()
    scheduler.add(waiting)
    scheduler.finish(running)
    scheduler.finish(waiting)
    assert manager.num_free_blocks == 8 and not scheduler.has_work
    assert running.is_finished and waiting.is_finished


def test_the_scheduler_alone_writes_the_computed_tokens():
    """Scheduling leaves them; `update` advances them by the batch; a cached prefix counts at admission; losing
    the blocks (preemption, finish) zeroes them."""
    manager = BlockManager(num_blocks=5, block_size=4)
    scheduler = Scheduler(scheduler_config(max_num_batched_tokens=6), manager)
    first = make_seq(10)
    scheduler.add(first)
    batch = scheduler.schedule()
    assert scheduled(batch) == [(first, 6)] and first.num_computed_tokens == 0
    scheduler.update(batch)
    assert first.num_computed_tokens == 6
    scheduler.update(scheduler.schedule())
    assert first.num_computed_tokens == 10
    first.output_token_ids.append(1)  # sampled at its last prompt token
    again = make_seq(10, "again")
    scheduler.add(again)
    batch = scheduler.schedule()  # first's decode, then again's 2 uncached tokens (8 found cached)
    assert scheduled(batch) == [(first, 1), (again, 2)] and again.num_computed_tokens == 8
    scheduler.update(batch)
    first.output_token_ids += [2, 3]
    again.output_token_ids += [1, 2, 3]  # 13 tokens each: a 4th block each, one left: again is preempted
    batch = scheduler.schedule()
    assert scheduled(batch) == [(first, 2)] and again.num_computed_tokens == 0 and again.block_table == []
    scheduler.finish(first)
    assert first.num_computed_tokens == 0
