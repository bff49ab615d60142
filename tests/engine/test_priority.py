"""Priority and background (batch) scheduling: the queue's order, who is preempted, and what a batch filling the
engine costs an interactive request's first token, counted in engine steps."""

import pytest

from tests.engine.test_scheduler import complete, make_seq, scheduled, scheduler_config
from tests.models.test_mllama_parity import random_ids
from vlmserve import LLM, SamplingParams
from vlmserve.engine.block_manager import BlockManager
from vlmserve.engine.input_processor import PreparedInput
from vlmserve.engine.scheduler import Scheduler


def ranked_seq(num_prompt: int, request_id: str, priority: int = 0, background: bool = False):
    seq = make_seq(num_prompt, request_id, first_token=1000 * len(request_id) + num_prompt)
    seq.priority, seq.background = priority, background
    return seq


def test_queue_runs_interactive_before_background_then_by_priority_then_arrival():
    scheduler = Scheduler(scheduler_config(max_num_seqs=1), BlockManager(100, 4))
    batch_line = ranked_seq(3, "batch", background=True)
    late, urgent, first = ranked_seq(3, "late", 5), ranked_seq(3, "urgent", -1), ranked_seq(3, "first", 5)
    for seq in (batch_line, late, urgent, first):
        scheduler.add(seq)
    assert scheduler.waiting == [urgent, late, first, batch_line]


def test_an_interactive_arrival_preempts_the_newest_background_sequence_for_a_slot():
    scheduler = Scheduler(scheduler_config(max_num_seqs=2), BlockManager(100, 4))
    old, new = ranked_seq(3, "old", background=True), ranked_seq(3, "new", background=True)
    scheduler.add(old)
    scheduler.add(new)
    complete(scheduler.schedule())
    user = ranked_seq(3, "user")
    scheduler.add(user)
    batch = scheduler.schedule()
    assert scheduled(batch) == [(old, 1), (user, 3)]  # `new` was scheduled, then taken out of the step
    assert scheduler.waiting == [new] and new.num_computed_tokens == 0 and not new.block_table
    assert scheduler.num_preemptions == 1


def test_equal_ranks_wait_for_a_slot_rather_than_preempt():
    scheduler = Scheduler(scheduler_config(max_num_seqs=1), BlockManager(100, 4))
    running, waiting = ranked_seq(3, "a"), ranked_seq(3, "b")
    scheduler.add(running)
    complete(scheduler.schedule())
    scheduler.add(waiting)
    assert scheduled(scheduler.schedule()) == [(running, 1)] and scheduler.num_preemptions == 0


def test_running_out_of_blocks_preempts_background_before_an_older_interactive_sequence():
    manager = BlockManager(num_blocks=4, block_size=4)
    scheduler = Scheduler(scheduler_config(), manager)
    user, batch_line = ranked_seq(8, "user"), ranked_seq(8, "batch", background=True)
    scheduler.add(batch_line)
    scheduler.add(user)
    complete(scheduler.schedule())  # both prefilled: each needs a third block for its 9th token
    assert scheduled(scheduler.schedule()) == [(user, 1)]
    assert scheduler.waiting == [batch_line]


@pytest.fixture(scope="module")
def small_engine(tiny_checkpoints):
    """Four running slots and a budget that prefills one 40-token prompt per step."""
    llm = LLM(tiny_checkpoints["gqa2-2tiles"].path, dtype="float32", device="cpu", num_kv_blocks=256,
              block_size=4, max_num_seqs=4, max_num_batched_tokens=48, scheduling_policy="priority")
    return llm.engine


def steps_to_first_token(engine, background_lines: int, background: bool = True) -> int:
    """Steps an interactive request waits for its first token, arriving when `background_lines` long requests
    (batch lines when `background`) fill the engine."""
    long = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
    for i in range(background_lines):
        prompt = PreparedInput([1, *random_ids(40, seed=i)])
        engine.add_request(f"line-{i}", prompt, long, background=background)
    while engine.scheduler.waiting:
        engine.step()
    engine.add_request("user", PreparedInput([1, *random_ids(30, seed=99)]),
                       SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    for steps in range(1, 500):
        if any(output.request_id == "user" and output.outputs[0].token_ids for output in engine.step()):
            break
    for i in range(background_lines):
        engine.abort_request(f"line-{i}")
    return steps


def test_a_running_batch_costs_an_interactive_request_one_step_of_first_token(small_engine):
    preemptions = small_engine.scheduler.num_preemptions
    idle = steps_to_first_token(small_engine, 0)
    assert steps_to_first_token(small_engine, 4) == idle == 1
    assert small_engine.scheduler.num_preemptions == preemptions + 1  # one batch line made room
    # The same long requests sent as interactive ones keep every slot until they finish.
    assert steps_to_first_token(small_engine, 4, background=False) > 100


def test_priority_needs_the_priority_policy(tiny_checkpoints):
    llm = LLM(tiny_checkpoints["gqa2-2tiles"].path, dtype="float32", device="cpu", num_kv_blocks=64)
    with pytest.raises(ValueError, match="priority .*--scheduling-policy priority"):
        llm.generate({"prompt_token_ids": [1, 2]}, SamplingParams(max_tokens=1), priority=[3], use_tqdm=False)
    with pytest.raises(ValueError, match="one per prompt"):
        llm.generate([{"prompt_token_ids": [1]}] * 2, SamplingParams(max_tokens=1), priority=[0], use_tqdm=False)
