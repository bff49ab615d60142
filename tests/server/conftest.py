"""Apps on the tiny demo checkpoint, in process through httpx's ASGI transport."""

import asyncio

import httpx
import pytest

from tests.server.helpers import MODEL, engine_config
from vlmserve.engine.async_engine import AsyncLLMEngine
from vlmserve.engine.llm_engine import LLMEngine, build_engine
from vlmserve.server.app import build_app
from vlmserve.server.config import ServerConfig


@pytest.fixture(scope="module")
def engine(demo_model_dir) -> LLMEngine:
    """One engine per test module; each test wraps it in a fresh AsyncLLMEngine on its own event loop."""
    return build_engine(engine_config(demo_model_dir))


@pytest.fixture
def serve(engine):
    """serve(body, **ServerConfig fields): run `await body(client)` against a fresh app; returns its result."""
    def run(body, *, llm_engine: LLMEngine | None = None, **config):
        async def main():
            async_engine = AsyncLLMEngine(llm_engine or engine)
            app = build_app(async_engine, ServerConfig(served_model_name=MODEL, **config))
            try:
                transport = httpx.ASGITransport(app)
                async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
                    return await body(client)
            finally:
                await async_engine.shutdown()
                await app.state.fetcher.aclose()
                app.state.client.close()
                if app.state.responses is not None:
                    app.state.responses.close()
                if app.state.batches is not None:
                    app.state.batches.db.close()
        return asyncio.run(main())
    return run
