"""Output constraints through the API: response_format, vLLM's structured_outputs and legacy guided_* fields."""

import json

from tests.server.helpers import MODEL

ASK = {"model": MODEL, "max_tokens": 24, "temperature": 0, "messages": [{"role": "user", "content": "Answer."}]}


def post_all(serve, bodies: list[dict]) -> list:
    async def run(client):
        return [await client.post("/v1/chat/completions", json=body) for body in bodies]
    return serve(run)


def test_json_schema_and_json_object_response_formats_constrain_the_answer(serve):
    # A schema the random-weight model finishes in a few tokens (objects let it pad with whitespace forever).
    schema = {"type": "string", "enum": ["red", "green"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "colour", "schema": schema, "strict": True}}
    schema_answer, object_answer = post_all(serve, [{**ASK, "response_format": response_format},
                                                    {**ASK, "response_format": {"type": "json_object"}}])
    assert schema_answer.status_code == 200, schema_answer.text
    choice = schema_answer.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and json.loads(choice["message"]["content"]) in schema["enum"]
    assert object_answer.status_code == 200, object_answer.text
    assert object_answer.json()["choices"][0]["message"]["content"].startswith("{")


def test_choice_and_legacy_guided_choice_pick_from_the_list(serve):
    choices = ["yes", "no"]
    responses = post_all(serve, [{**ASK, "structured_outputs": {"choice": choices}},
                                 {**ASK, "guided_choice": choices}])
    for response in responses:
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] in choices


def test_text_response_format_is_unconstrained_and_bad_constraints_are_400(serve):
    responses = post_all(serve, [
        {**ASK, "response_format": {"type": "text"}},
        {**ASK, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        {**ASK, "structured_outputs": {"choice": ["a"]}, "guided_regex": "a+"},
        {**ASK, "structured_outputs": {"regexp": "a+"}},
        {**ASK, "response_format": {"type": "yaml"}},
    ])
    assert [r.status_code for r in responses] == [200, 400, 400, 400, 400]
    assert responses[1].json()["error"]["param"] == "response_format.json_schema.schema"
    assert responses[2].json()["error"]["param"] == "structured_outputs"
