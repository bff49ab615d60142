"""The public Python API end to end on the tiny demo checkpoint (real tokenizer, random weights)."""

import pytest
from PIL import Image

from tests.helpers import png_bytes, png_data_url
from vlmserve import LLM, SamplingParams
from vlmserve.engine.input_processor import InputError
from vlmserve.multimodal.inputs import ImageInputError
from vlmserve.tool_calls.grammar import tool_call_constraint
from vlmserve.tool_calls.parser import parse_tool_calls
from vlmserve.tool_calls.types import Tool

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def image_message(url: str, text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def test_generate_returns_text_tokens_and_reasons(demo_llm):
    out = demo_llm.generate("Hello there", GREEDY, use_tqdm=False)[0]
    tokenizer = demo_llm.get_tokenizer()
    assert out.prompt_token_ids[0] == tokenizer.bos_token_id
    assert out.prompt_token_ids == tokenizer.encode("<|begin_of_text|>Hello there")
    completion = out.outputs[0]
    assert len(completion.token_ids) == 12 and completion.finish_reason == "length"
    assert completion.text == tokenizer.decode(completion.token_ids, skip_special_tokens=True)


def test_batched_greedy_equals_each_request_alone(demo_llm, tmp_path):
    path = tmp_path / "img.png"
    path.write_bytes(png_bytes(size=(90, 50), color=(10, 200, 90)))
    conversations = [
        image_message(png_data_url(color=(200, 30, 30)), "What colour is this?"),
        [{"role": "user", "content": "Tell me a story about a boat."}],
        image_message(str(path), "Describe it."),
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    ]
    batched = demo_llm.chat(conversations, GREEDY, use_tqdm=False, date_string="26 Jul 2024")
    for conversation, together in zip(conversations, batched):
        alone = demo_llm.chat(conversation, GREEDY, use_tqdm=False, date_string="26 Jul 2024")[0]
        assert together.outputs[0].token_ids == alone.outputs[0].token_ids
    assert [o.num_images for o in batched] == [1, 0, 1, 0]


def test_images_change_the_answer(demo_llm):
    red = demo_llm.chat(image_message(png_data_url(color=(255, 0, 0)), "Colour?"), GREEDY, use_tqdm=False)[0]
    blue = demo_llm.chat(image_message(png_data_url(color=(0, 0, 255)), "Colour?"), GREEDY, use_tqdm=False)[0]
    assert red.prompt_token_ids == blue.prompt_token_ids
    assert red.outputs[0].token_ids != blue.outputs[0].token_ids


def test_pil_image_and_raw_prompt_with_marker(demo_llm):
    image = Image.new("RGB", (64, 64), (0, 128, 255))
    out = demo_llm.generate({"prompt": "<|image|>If I had to write a haiku", "images": [image]}, GREEDY,
                            use_tqdm=False)[0]
    tokenizer = demo_llm.get_tokenizer()
    assert out.prompt_token_ids[:2] == [tokenizer.image_token_id, tokenizer.bos_token_id]
    assert out.num_images == 1


def test_stop_token_and_stop_string(demo_llm):
    free = demo_llm.generate("Count:", GREEDY, use_tqdm=False)[0].outputs[0]
    stop_id = free.token_ids[3]
    stopped = demo_llm.generate("Count:", SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop_id]),
                                use_tqdm=False)[0].outputs[0]
    assert stopped.token_ids == free.token_ids[: free.token_ids.index(stop_id) + 1]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop_id
    stop_text = free.text[len(free.text) // 2: len(free.text) // 2 + 2]
    cut = demo_llm.generate("Count:", SamplingParams(temperature=0, max_tokens=12, stop=[stop_text]),
                            use_tqdm=False)[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop_text
    assert cut.text == free.text[: free.text.index(stop_text)]


def test_logprobs_and_n_with_seed(demo_llm):
    params = SamplingParams(temperature=1.0, max_tokens=6, n=3, seed=7, logprobs=2, ignore_eos=True)
    first = demo_llm.generate("Once upon a time", params, use_tqdm=False)[0]
    again = demo_llm.generate("Once upon a time", params, use_tqdm=False)[0]
    assert [o.token_ids for o in first.outputs] == [o.token_ids for o in again.outputs]
    assert len({tuple(o.token_ids) for o in first.outputs}) > 1  # the n samples differ
    for completion in first.outputs:
        assert len(completion.logprobs) == 6
        for token, entry in zip(completion.token_ids, completion.logprobs):
            assert token in entry and 2 <= len(entry) <= 3 and all(v <= 0 for v in entry.values())


def test_bad_inputs_raise_clear_errors(demo_llm):
    with pytest.raises(InputError, match="1 <|image|> marker"):
        demo_llm.generate({"prompt": "<|image|>two?", "images": []}, use_tqdm=False)
    with pytest.raises(InputError, match="outside the model's vocabulary"):
        demo_llm.generate({"prompt_token_ids": [128000, 999999]}, use_tqdm=False)
    with pytest.raises(ImageInputError):
        demo_llm.chat(image_message("data:image/png;base64,bm90IGFuIGltYWdl", "?"), use_tqdm=False)
    with pytest.raises(ValueError, match="max_tokens"):
        demo_llm.generate("Hi", SamplingParams(max_tokens=10**6), use_tqdm=False)
    assert not demo_llm.engine.has_unfinished_requests()


def test_small_kv_pool_preempts_and_still_matches(demo_model_dir):
    prompts = [f"Request number {i} asks about the weather in town {i}." for i in range(6)]
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    roomy = LLM(demo_model_dir, dtype="float32", device="cpu", num_kv_blocks=200)
    tight = LLM(demo_model_dir, dtype="float32", device="cpu", num_kv_blocks=12, block_size=4)
    expected = [o.outputs[0].token_ids for o in roomy.generate(prompts, params, use_tqdm=False)]
    got = [o.outputs[0].token_ids for o in tight.generate(prompts, params, use_tqdm=False)]
    assert got == expected
    assert tight.engine.scheduler.num_preemptions > 0
    assert tight.engine.scheduler.block_manager.num_free_blocks == 12


def test_long_prompt_list_streams_through_in_order(demo_model_dir):
    llm = LLM(demo_model_dir, dtype="float32", device="cpu", num_kv_blocks=64, max_num_seqs=3)
    prompts = [f"Item {i}:" for i in range(20)]
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.prompt for o in outputs] == prompts
    assert outputs[7].outputs[0].token_ids == llm.generate(prompts[7], params, use_tqdm=False)[0].outputs[0].token_ids
    with pytest.raises(InputError, match="marker"):
        llm.generate(prompts[:10] + [{"prompt": "<|image|>?", "images": []}] + prompts[10:], params, use_tqdm=False)
    assert not llm.engine.has_unfinished_requests() and llm.engine.scheduler.block_manager.num_free_blocks == 64


def test_chat_offers_tools_and_a_grammar_makes_the_answer_a_call(demo_llm):
    parameters = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"]}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": parameters}}]
    messages = [{"role": "user", "content": "Weather in Rome?"}]
    call = SamplingParams(max_tokens=40, temperature=0, structured_outputs=tool_call_constraint(
        "json", [Tool.from_openai(tools[0])]))
    [with_tools] = demo_llm.chat(messages, call, tools=tools, use_tqdm=False)
    [plain] = demo_llm.chat(messages, SamplingParams(max_tokens=1), use_tqdm=False)
    assert len(with_tools.prompt_token_ids) > len(plain.prompt_token_ids) + 10  # the definitions are in the prompt
    [parsed] = parse_tool_calls(with_tools.outputs[0].text, ["get_weather"]).calls
    assert parsed.name == "get_weather" and parsed.arguments["city"] in ("Paris", "Rome")
    with pytest.raises(ValueError, match="a tool must be"):
        demo_llm.chat(messages, tools=[{"name": "get_weather"}], use_tqdm=False)
