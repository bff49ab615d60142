"""/v1/responses through the official openai client and the OpenAI Agents SDK against `vlmserve serve` with a data
directory: an image answered, the stream's events parsed by the SDK in order, a stored response continued after
the server restarts, and an agent whose model calls its function tool."""

import asyncio
from typing import Literal

import openai
import pytest
from agents import Agent, ModelSettings, OpenAIResponsesModel, RunConfig, Runner, function_tool

from tests.helpers import png_data_url
from tests.server.helpers import MODEL, LiveServer


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("responses")


@pytest.fixture(scope="module")
def server(demo_model_dir, data_dir):
    live = LiveServer(demo_model_dir, "--data-dir", str(data_dir))
    yield live
    live.stop()


def client_of(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_an_image_is_answered_and_usage_counts_it(server):
    response = client_of(server).responses.create(
        model=MODEL, instructions="Describe images.", max_output_tokens=5, temperature=0,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "What is this?"},
                                            {"type": "input_image", "image_url": png_data_url(), "detail": "auto"}]}])
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == response.output[0].content[0].text
    assert response.usage.output_tokens == 5 and response.usage.model_extra["num_images"] == 1


def test_streamed_events_come_in_order_and_join_to_the_answer(server):
    events = list(client_of(server).responses.create(model=MODEL, input="Tell me a story.", max_output_tokens=6,
                                                     temperature=0, stream=True))
    kinds = [event.type for event in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-1] == "response.incomplete" and kinds.count("response.output_item.done") == 1
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text == events[-1].response.output_text


def test_an_agent_calls_its_function_tool(server):
    calls = []

    @function_tool
    def get_weather(city: Literal["Paris", "Rome"]) -> str:
        """The weather in a city."""
        calls.append(city)
        return "18 C and sunny"

    model = OpenAIResponsesModel(model=MODEL, openai_client=openai.AsyncOpenAI(
        base_url=f"{server.url}/v1", api_key="unused", max_retries=0))
    # Random weights never end free text, so the run ends with the tool's result as the final output; the
    # argument is an enum so that the grammar-forced call is short.
    agent = Agent(name="weather", instructions="Answer with the tool's help.", tools=[get_weather], model=model,
                  model_settings=ModelSettings(tool_choice="required", max_tokens=40, temperature=0),
                  tool_use_behavior="stop_on_first_tool")
    result = asyncio.run(Runner.run(agent, "Weather in Paris?", max_turns=3,
                                    run_config=RunConfig(tracing_disabled=True)))
    assert len(calls) == 1 and result.final_output == "18 C and sunny"


def test_previous_response_id_continues_after_a_restart(demo_model_dir, data_dir, server):
    first = client_of(server).responses.create(model=MODEL, input="My name is Ada.", max_output_tokens=4,
                                               temperature=0)
    server.stop()
    restarted = LiveServer(demo_model_dir, "--data-dir", str(data_dir))
    try:
        client = client_of(restarted)
        alone = client.responses.create(model=MODEL, input="And my name?", max_output_tokens=4, temperature=0)
        follow = client.responses.create(model=MODEL, input="And my name?", max_output_tokens=4, temperature=0,
                                         previous_response_id=first.id)
        assert follow.previous_response_id == first.id
        assert follow.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens
        assert client.responses.retrieve(first.id).output_text == first.output_text
    finally:
        restarted.stop()
