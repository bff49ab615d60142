"""Operational endpoints: /health, /v1/models, /metrics, /tokenize and /detokenize, /openapi.json."""

from tests.helpers import png_data_url
from tests.server.helpers import MODEL, image_message


def test_models_and_health(serve):
    async def run(client):
        return (await client.get("/v1/models")).json(), await client.get("/health")

    models, health = serve(run)
    assert models["object"] == "list"
    assert [(m["id"], m["object"], m["max_model_len"]) for m in models["data"]] == [(MODEL, "model", 2048)]
    assert health.status_code == 200


def test_metrics_count_requests_tokens_images_and_cost(serve):
    async def run(client):
        await client.post("/v1/chat/completions", json={
            "model": MODEL, "max_tokens": 3, "ignore_eos": True, "messages": [image_message("x", png_data_url())]})
        await client.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
        return (await client.get("/metrics")).text

    text = serve(run)
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(samples['vlmserve_requests_total{endpoint="/v1/chat/completions",status="200"}']) == 1
    assert float(samples['vlmserve_requests_total{endpoint="/v1/chat/completions",status="404"}']) == 1
    assert float(samples["vlmserve_completion_tokens_total"]) == 3
    assert float(samples["vlmserve_prompt_tokens_total"]) > 3
    assert float(samples["vlmserve_images_total"]) == 1
    assert float(samples['vlmserve_cost_usd_total{api_key="anonymous"}']) > 0.0005
    assert float(samples["vlmserve_time_to_first_token_seconds_count"]) == 1
    assert float(samples["vlmserve_e2e_request_latency_seconds_count"]) == 1
    assert float(samples["vlmserve_inter_token_latency_seconds_count"]) == 2  # 3 tokens, one per step
    assert float(samples["vlmserve_time_per_output_token_seconds_count"]) == 1
    assert 0 < float(samples["vlmserve_time_per_output_token_seconds_sum"]) < 60
    for name in ("vlmserve_num_requests_running", "vlmserve_num_requests_waiting", "vlmserve_kv_cache_usage_perc",
                 "vlmserve_prefix_cache_hits_total", "vlmserve_encoder_cache_hits_total"):
        assert name in samples


def test_tokenize_detokenize_round_trip(serve):
    async def run(client):
        tokens = (await client.post("/tokenize", json={"prompt": "Hello, world"})).json()
        bare = (await client.post("/tokenize", json={"prompt": "Hello, world", "add_special_tokens": False})).json()
        text = (await client.post("/detokenize", json={"tokens": bare["tokens"]})).json()
        chat = (await client.post("/tokenize", json={"messages": [image_message("x", "https://example.com/a.png")]}))
        bad = await client.post("/detokenize", json={"tokens": [10 ** 7]})
        both = await client.post("/tokenize", json={"prompt": "x", "messages": [{"role": "user", "content": "x"}]})
        return tokens, bare, text, chat.json(), bad, both

    tokens, bare, text, chat, bad, both = serve(run)
    assert tokens["tokens"][0] == 128000 and tokens["tokens"][1:] == bare["tokens"]
    assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == 2048
    assert text == {"prompt": "Hello, world"}
    assert chat["tokens"].count(128256) == 1  # the image marker; the URL is not fetched
    assert bad.status_code == 400 and both.status_code == 400


def test_openapi_describes_every_endpoint(serve):
    async def run(client):
        return (await client.get("/openapi.json")).json()

    spec = serve(run)
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/tokenize",
            "/detokenize"} <= set(spec["paths"])
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert {"400", "401", "404", "413", "429"} <= set(chat["responses"])
    assert "top_k" in spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]
