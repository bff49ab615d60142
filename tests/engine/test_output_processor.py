"""The output processor on the real Llama 3.2 tokenizer: deltas, stop strings across steps, logprobs, n > 1, abort."""

import pytest

from vlmserve import SamplingParams
from vlmserve.engine.input_processor import PreparedInput
from vlmserve.engine.output_processor import OutputProcessor
from vlmserve.engine.outputs import OutputCollector
from vlmserve.tokenizer.tokenizer import load_tokenizer

EOS = 128009
TEXT = "The quick brown fox jumps over the lazy dog, then naps."


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def start(tokenizer, params: SamplingParams, request_id: str = "r", max_model_len: int = 4096) -> OutputProcessor:
    processor = OutputProcessor(tokenizer, max_model_len)
    prompt = tokenizer.encode("Tell me")
    stop_token_ids = (*params.stop_token_ids, EOS)  # as the engine passes them: EOS unless ignore_eos
    processor.add(request_id, PreparedInput(prompt, prompt="Tell me"), params, stop_token_ids)
    return processor


def feed(processor: OutputProcessor, token_ids: list[int], index: int = 0, request_id: str = "r", logprobs=None):
    """One step per token until the completion finishes (as the engine feeds it); every step's outputs."""
    steps = []
    for position, token_id in enumerate(token_ids):
        finished = processor.append(request_id, index, token_id, logprobs and logprobs[position], 100 + position)
        steps.append(processor.step_outputs())
        if finished:
            break
    return steps


def joined(steps) -> OutputCollector:
    collector = OutputCollector()
    for outputs in steps:
        for output in outputs:
            collector.add(output)
    return collector


def test_deltas_carry_each_token_once_and_join_to_the_decoded_text(tokenizer):
    ids = tokenizer.encode(TEXT)
    steps = feed(start(tokenizer, SamplingParams(max_tokens=len(ids))), ids)
    assert all(len(outputs) == 1 and len(outputs[0].outputs[0].token_ids) == 1 for outputs in steps)
    whole = joined(steps).result()
    assert whole.finished and whole.outputs[0].finish_reason == "length"
    assert whole.outputs[0].text == TEXT and whole.outputs[0].token_ids == ids


def test_a_character_split_over_tokens_is_sent_once_whole(tokenizer):
    ids = tokenizer.encode("a🦊b")
    fox = [i for i in ids if tokenizer.decode([i]) not in ("a", "b")]
    assert len(fox) > 1  # byte-level pieces of one character
    steps = feed(start(tokenizer, SamplingParams(max_tokens=10)), ids)
    texts = [outputs[0].outputs[0].text for outputs in steps]
    assert "\ufffd" not in "".join(texts) and "".join(texts) == "a🦊b"
    assert texts.count("") == len(fox) - 1


@pytest.mark.parametrize("include", [False, True])
def test_a_stop_string_spanning_steps_is_never_sent_past_the_cut(tokenizer, include):
    ids = tokenizer.encode(TEXT)
    pieces = [tokenizer.decode([i]) for i in ids]
    boundary = len("".join(pieces[:4]))  # "The quick brown fox" | " jumps"
    stop = TEXT[boundary - 2:boundary + 3]  # "ox ju": its first part arrives a step before the rest
    params = SamplingParams(max_tokens=len(ids), stop=["never said", stop], include_stop_str_in_output=include)
    steps = feed(start(tokenizer, params), ids)
    sent = ""
    for outputs in steps:
        if outputs:
            sent += outputs[0].outputs[0].text
    end = TEXT.index(stop) + (len(stop) if include else 0)
    assert sent == TEXT[:end]  # text only grows: nothing past the cut was ever sent
    last = steps[-1][0]
    assert last.finished and last.outputs[0].finish_reason == "stop" and last.outputs[0].stop_reason == stop
    assert len(steps) == 5  # the fifth token, which completed the stop string, ended it


def test_stop_tokens_min_tokens_and_the_context_limit(tokenizer):
    eos_first = feed(start(tokenizer, SamplingParams(max_tokens=5, min_tokens=2)), [EOS, 791, EOS])
    assert [o[0].outputs[0].finish_reason for o in eos_first] == [None, None, "stop"]
    assert eos_first[-1][0].outputs[0].stop_reason is None  # EOS is not a requested stop token
    asked = feed(start(tokenizer, SamplingParams(max_tokens=5, stop_token_ids=[791])), [791])
    assert asked[0][0].outputs[0].stop_reason == 791
    processor = start(tokenizer, SamplingParams(max_tokens=50), max_model_len=101)
    assert [processor.append("r", 0, 791, None, n) for n in (100, 101)] == [False, True]
    assert processor.step_outputs()[0].outputs[0].finish_reason == "length"


def test_logprobs_travel_with_their_tokens(tokenizer):
    ids = tokenizer.encode(TEXT)[:4]
    logprobs = [{token: -0.1 * k, 0: -9.0} for k, token in enumerate(ids)]
    steps = feed(start(tokenizer, SamplingParams(max_tokens=4, logprobs=1)), ids, logprobs=logprobs)
    assert [o[0].outputs[0].logprobs for o in steps] == [[entry] for entry in logprobs]
    assert joined(steps).result().outputs[0].logprobs == logprobs
    without = feed(start(tokenizer, SamplingParams(max_tokens=4)), ids)
    assert all(o[0].outputs[0].logprobs is None for o in without)


def test_n_completions_advance_and_finish_independently(tokenizer):
    processor = start(tokenizer, SamplingParams(n=2, max_tokens=3))
    ids = tokenizer.encode(TEXT)
    processor.append("r", 0, EOS, None, 10)
    processor.append("r", 1, ids[0], None, 10)
    first = processor.step_outputs()[0]
    assert [c.index for c in first.outputs] == [0, 1] and not first.finished
    processor.append("r", 1, ids[1], None, 11)
    second = processor.step_outputs()[0]
    assert [c.index for c in second.outputs] == [1] and not second.finished  # the finished one is not repeated
    processor.append("r", 1, ids[2], None, 12)
    last = processor.step_outputs()[0]
    assert last.finished and last.outputs[0].finish_reason == "length"
    assert len(processor) == 0 and processor.step_outputs() == []


def test_abort_sends_the_held_back_text_once(tokenizer):
    ids = tokenizer.encode(TEXT)
    processor = start(tokenizer, SamplingParams(n=2, max_tokens=20, stop=["<never>"]))
    processor.append("r", 0, EOS, None, 10)
    for token_id in ids[:3]:
        processor.append("r", 1, token_id, None, 10)
    streamed = processor.step_outputs()[0].outputs[1].text
    last = processor.abort("r")
    assert last.finished and [c.index for c in last.outputs] == [1]
    assert last.outputs[0].finish_reason == "abort" and last.outputs[0].token_ids == []
    assert streamed + last.outputs[0].text == tokenizer.decode(ids[:3]) and len(streamed) < len(TEXT[:15])
    assert processor.abort("r") is None and len(processor) == 0


def test_a_failed_request_ends_once_with_its_held_back_text(tokenizer):
    ids = tokenizer.encode(TEXT)
    processor = start(tokenizer, SamplingParams(max_tokens=20, stop=["<never>"]))
    processor.append("r", 0, ids[0], None, 10)
    assert processor.fail("r", "RuntimeError: boom") and not processor.fail("r", "again")
    output = processor.step_outputs()[0]
    assert output.finished and output.error == "RuntimeError: boom"
    assert output.outputs[0].finish_reason == "error" and output.outputs[0].text == tokenizer.decode(ids[:1])
