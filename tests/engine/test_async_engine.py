"""The asyncio front end on the tiny demo checkpoint: streaming deltas, aborts, client disconnects, bad requests."""

import asyncio

import pytest

from vlmserve import SamplingParams
from vlmserve.config import EngineConfig
from vlmserve.engine.async_engine import AsyncLLMEngine, EngineDeadError
from vlmserve.engine.llm_engine import build_engine
from vlmserve.engine.outputs import OutputCollector

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
PROMPTS = ["Hello there", "Tell me a story about a boat.", "What is 2 + 2?", "Bonjour"]


@pytest.fixture(scope="module")
def engine(demo_model_dir):
    return build_engine(EngineConfig(model=str(demo_model_dir), dtype="float32", device="cpu", num_kv_blocks=64))


def run_sync(engine, prompts, params):
    """The synchronous reference: add every prompt, step until all finish."""
    ids = [f"sync-{i}" for i in range(len(prompts))]
    for request_id, prompt in zip(ids, prompts):
        engine.add_request(request_id, engine.input_processor.process_prompt(prompt), params)
    collectors = {request_id: OutputCollector() for request_id in ids}
    while engine.has_unfinished_requests():
        for output in engine.step():
            collectors[output.request_id].add(output)
    return [collectors[i].result().outputs[0] for i in ids]


def run(engine, body):
    """Run `body(async_engine)` in a fresh event loop and shut the async engine down afterwards."""
    async def main():
        async_engine = AsyncLLMEngine(engine)
        try:
            return await body(async_engine)
        finally:
            await async_engine.shutdown()
    return asyncio.run(main())


async def collect(async_engine, engine, prompt, params, request_id=None):
    prepared = engine.input_processor.process_prompt(prompt)
    return [out async for out in async_engine.generate(prepared, params, request_id)]


def joined(chunks):
    return ("".join(c.outputs[0].text for c in chunks if c.outputs),
            [t for c in chunks if c.outputs for t in c.outputs[0].token_ids])


def test_concurrent_streams_match_the_sync_engine(engine):
    expected = run_sync(engine, PROMPTS, GREEDY)
    free = engine.scheduler.block_manager.num_free_blocks

    async def body(async_engine):
        return await asyncio.gather(*(collect(async_engine, engine, p, GREEDY) for p in PROMPTS))

    results = run(engine, body)
    for chunks, reference in zip(results, expected):
        assert joined(chunks) == (reference.text, reference.token_ids)
        assert len(reference.token_ids) == 8
        assert len(chunks) > 1 and all(not c.finished for c in chunks[:-1])
        assert chunks[-1].finished and chunks[-1].outputs[0].finish_reason == "length"
    assert len({c.request_id for chunks in results for c in chunks}) == len(PROMPTS)  # uuid ids
    assert engine.scheduler.block_manager.num_free_blocks == free


def test_abort_mid_generation_frees_blocks_and_ends_with_abort(engine):
    free = engine.scheduler.block_manager.num_free_blocks

    async def body(async_engine):
        params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
        stream = async_engine.generate(engine.input_processor.process_prompt("Hello"), params, "to-abort")
        chunks = [await anext(stream)]
        assert engine.scheduler.block_manager.num_free_blocks < free
        await async_engine.abort("to-abort")
        assert engine.scheduler.block_manager.num_free_blocks == free
        assert not engine.has_unfinished_requests()
        return chunks + [out async for out in stream]

    chunks = run(engine, body)
    last = chunks[-1]
    assert last.finished and last.outputs[0].finish_reason == "abort" and last.outputs[0].token_ids == []
    assert len(joined(chunks)[1]) < 40


def test_closing_the_consumer_aborts_the_request(engine):
    free = engine.scheduler.block_manager.num_free_blocks

    async def body(async_engine):
        params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
        stream = async_engine.generate(engine.input_processor.process_prompt("Hello"), params)
        async for _ in stream:
            break
        assert engine.has_unfinished_requests()
        await stream.aclose()
        assert engine.scheduler.block_manager.num_free_blocks == free
        assert not engine.has_unfinished_requests() and async_engine.num_running == 0
        assert async_engine.kv_cache_usage == 1 - free / engine.scheduler.block_manager.num_blocks
        # a consumer task cancelled mid-stream (how a server sees a dropped connection) aborts it too
        started = asyncio.Event()

        async def consume():
            async for _ in async_engine.generate(engine.input_processor.process_prompt("Hi"), params):
                started.set()
        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert engine.scheduler.block_manager.num_free_blocks == free and not engine.has_unfinished_requests()

    run(engine, body)


def test_bad_requests_raise_and_the_engine_keeps_serving(engine):
    expected = run_sync(engine, ["Hi"], GREEDY)[0]

    async def body(async_engine):
        with pytest.raises(ValueError, match="context length"):
            await collect(async_engine, engine, "Hi", SamplingParams(max_tokens=10**6))
        slow = async_engine.generate(engine.input_processor.process_prompt("Hi"),
                                     SamplingParams(temperature=0, max_tokens=40, ignore_eos=True), "same-id")
        await anext(slow)
        with pytest.raises(ValueError, match="already running"):
            await collect(async_engine, engine, "Hi", GREEDY, request_id="same-id")
        await slow.aclose()
        return await collect(async_engine, engine, "Hi", GREEDY, request_id="same-id")

    chunks = run(engine, body)
    assert joined(chunks) == (expected.text, expected.token_ids)
    assert not engine.has_unfinished_requests()


def test_stop_strings_never_stream_past_the_cut(engine):
    """A stop string that spans two steps' text: the first step's part must not have been streamed."""
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    chunks = run(engine, lambda a: collect(a, engine, "Tell me a story", params))
    full, boundary = "", []
    for chunk in chunks:
        if full and chunk.outputs[0].text:
            boundary.append(len(full))
        full += chunk.outputs[0].text
    # the first step boundary where the two characters around it first occur there
    cut = next(b for b in boundary if full.find(full[b - 1:b + 1]) == b - 1)
    stop = full[cut - 1:cut + 1]
    stopped = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop, "unlikely stop"])
    expected = run_sync(engine, ["Tell me a story"], stopped)[0]
    chunks = run(engine, lambda a: collect(a, engine, "Tell me a story", stopped))
    assert joined(chunks)[0] == expected.text == full[:cut - 1]
    assert stop not in joined(chunks)[0]
    assert chunks[-1].outputs[0].finish_reason == "stop" and chunks[-1].outputs[0].stop_reason == stop


def test_a_failing_step_fails_every_request_and_later_ones(engine, monkeypatch):
    def broken_step():
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine, "step", broken_step)

    async def body(async_engine):
        results = await asyncio.gather(*(collect(async_engine, engine, p, GREEDY, f"dead-{i}")
                                         for i, p in enumerate(PROMPTS[:2])), return_exceptions=True)
        assert all(isinstance(r, EngineDeadError) and "device lost" in str(r) for r in results)
        with pytest.raises(EngineDeadError):
            await collect(async_engine, engine, "Hi", GREEDY)

    run(engine, body)
    for i in range(2):
        engine.abort_request(f"dead-{i}")
    assert not engine.has_unfinished_requests()
