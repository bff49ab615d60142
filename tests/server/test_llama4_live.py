"""Llama 4 served by `vlmserve serve` through the same server code as Llama 3.2 Vision: the official openai client
streams a chat with an image, and the text equals the offline engine's greedy answer."""

import openai
import pytest

from tests.helpers import noise_png_data_url
from tests.server.helpers import MODEL, LiveServer, image_message
from vlmserve import LLM, SamplingParams

MAX_TOKENS = 10


@pytest.fixture(scope="module")
def server(served_llama4):
    live = LiveServer(served_llama4.path)
    yield live
    live.stop()


def test_streamed_chat_with_an_image_equals_offline_greedy(server, served_llama4):
    messages = [image_message("What is in this picture?", noise_png_data_url(45))]
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=MAX_TOKENS, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage

    llm = LLM(served_llama4.path, dtype="float32", device="cpu", num_kv_blocks=128)
    offline = llm.chat(messages, SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True),
                       use_tqdm=False)[0]
    assert streamed == offline.outputs[0].text
    assert usage.completion_tokens == MAX_TOKENS
    assert usage.prompt_tokens == len(offline.prompt_token_ids)
    assert usage.num_images == 1
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1


def test_models_list_and_field_checks_are_the_shared_server_code(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       extra_body={"no_such_field": 1})
