"""The FastAPI app: routes, auth, error bodies, metrics, and a lifespan that drains then stops the engine.

Uvicorn's graceful shutdown (SIGTERM, Ctrl-C) stops accepting connections and waits for the requests in flight;
only then does the lifespan end, shutting the engine down and closing the image fetcher.
"""

import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vlmserve.engine.async_engine import AsyncLLMEngine
from vlmserve.server.auth import authenticate
from vlmserve.server.config import ServerConfig
from vlmserve.server.engine_client import EngineClient
from vlmserve.server.errors import install_error_handlers
from vlmserve.server.image_fetch import ImageFetcher
from vlmserve.server.metrics import Metrics
from vlmserve.server.middleware import AnswerErrors, CountRequests, LimitBodySize
from vlmserve.server.openapi import ServedLimits, describe_server
from vlmserve.server.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeResponse,
    ErrorResponse,
    Health,
    Readiness,
    ModelCard,
    ModelList,
    TokenizeResponse,
)
from vlmserve.server.response_store import ResponseStore
from vlmserve.server.responses_protocol import DeletedResponse, ResponseObject, ResponsesRequest
from vlmserve.server.serving_batches import UPLOAD_OVERHEAD, Batches, add_batch_routes
from vlmserve.server.serving_chat import create_chat_completion
from vlmserve.server.serving_responses import create_response, delete_response, retrieve_response
from vlmserve.server.serving_completions import create_completion
from vlmserve.server.serving_tokens import detokenize, tokenize

logger = logging.getLogger("vlmserve.server")

ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 500, 503)}
STREAM = {"text/event-stream": {}}  # its event schema: openapi.describe_server


def build_app(engine: AsyncLLMEngine, config: ServerConfig) -> FastAPI:
    metrics = Metrics(engine.stats)
    fetcher = ImageFetcher(config.image_fetch)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if app.state.batches is not None:
            await app.state.batches.runner.start()
        try:
            yield
        finally:
            logger.info("requests drained; stopping the engine")
            if app.state.batches is not None:
                await app.state.batches.runner.stop()  # lines in flight resume on the next start
                app.state.batches.db.close()
            await engine.shutdown()
            await fetcher.aclose()
            app.state.client.close()
            if app.state.responses is not None:
                app.state.responses.close()

    app = FastAPI(title="vlmserve", summary="OpenAI-compatible server for Llama 3.2 Vision and Llama 4",
                  lifespan=lifespan)
    client = app.state.client = EngineClient(engine, config, metrics)
    app.state.fetcher = fetcher
    app.state.draining = False  # set by the first SIGTERM/SIGINT (launch.DrainingServer): /ready answers 503
    app.state.responses = None if config.data_dir is None else ResponseStore(
        config.data_dir, config.max_stored_responses, config.response_retention_days * 86400)
    app.state.batches = None if config.data_dir is None else Batches.open(app, config.data_dir, client)
    install_error_handlers(app)
    app.add_middleware(LimitBodySize, max_bytes=config.max_request_bytes(client.max_prompt_chars),
                       upload_bytes=config.max_batch_file_bytes + UPLOAD_OVERHEAD)
    app.add_middleware(AnswerErrors)
    app.add_middleware(CountRequests, metrics=metrics)  # outermost: counts what AnswerErrors answered too
    _add_routes(app, metrics)
    describe_server(app, ServedLimits(max_output_tokens=config.max_output_tokens,
                                      vocab_size=engine.tokenizer.vocab_size, num_embeddings=engine.num_embeddings,
                                      max_prompt_chars=client.max_prompt_chars))
    return app


def _add_routes(app: FastAPI, metrics: Metrics) -> None:
    guarded = [Depends(authenticate)]

    @app.get("/health", summary="200 while the engine runs, 503 once it has stopped", response_model=Health,
             responses={503: {"model": Health}, 500: {"model": ErrorResponse}})
    async def health(request: Request) -> Response:
        if request.app.state.client.engine_dead:
            return JSONResponse({"status": "engine stopped"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/ready", summary="200 while the server takes new requests; 503 once it drains or the engine stopped",
             response_model=Readiness, responses={503: {"model": Readiness}, 500: {"model": ErrorResponse}})
    async def ready(request: Request) -> Response:
        if request.app.state.client.engine_dead:
            return JSONResponse({"status": "engine stopped"}, status_code=503)
        if request.app.state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/v1/models", dependencies=guarded, responses=ERRORS)
    async def models(request: Request) -> ModelList:
        client: EngineClient = request.app.state.client
        return ModelList(data=[ModelCard(id=client.config.served_model_name, max_model_len=client.engine.max_model_len)])

    @app.post("/v1/chat/completions", response_model=None, responses={**ERRORS, 200: {
        "model": ChatCompletionResponse, "content": STREAM}})
    async def chat(body: ChatCompletionRequest, request: Request, key: str = Depends(authenticate)):
        return await create_chat_completion(body, request, key)

    @app.post("/v1/completions", response_model=None, responses={**ERRORS, 200: {
        "model": CompletionResponse, "content": STREAM}})
    async def completions(body: CompletionRequest, request: Request, key: str = Depends(authenticate)):
        return await create_completion(body, request, key)

    @app.post("/v1/responses", response_model=None, responses={**ERRORS, 200: {
        "model": ResponseObject, "content": STREAM}})
    async def responses(body: ResponsesRequest, request: Request, key: str = Depends(authenticate)):
        return await create_response(body, request, key)

    app.get("/v1/responses/{response_id}", dependencies=guarded, responses=ERRORS,
            response_model=ResponseObject)(retrieve_response)
    app.delete("/v1/responses/{response_id}", dependencies=guarded, responses=ERRORS,
               response_model=DeletedResponse)(delete_response)

    add_batch_routes(app, ERRORS)

    app.post("/tokenize", dependencies=guarded, responses=ERRORS, response_model=TokenizeResponse)(tokenize)
    app.post("/detokenize", dependencies=guarded, responses=ERRORS, response_model=DetokenizeResponse)(detokenize)

    @app.get("/metrics", dependencies=guarded, response_class=Response, summary="Prometheus text format",
             responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}},
                        401: {"model": ErrorResponse}, 500: {"model": ErrorResponse}})
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
