"""`vlmserve serve`: load the engine, build the app, run it on uvicorn until SIGTERM/SIGINT drains it."""

import logging
import signal
import sys

import uvicorn

from vlmserve.config import EngineConfig
from vlmserve.engine.async_engine import AsyncLLMEngine
from vlmserve.server.app import build_app
from vlmserve.server.config import ServerConfig

logger = logging.getLogger("vlmserve.server")


def serve(engine_config: EngineConfig, server_config: ServerConfig, *, host: str, port: int,
          log_level: str = "info") -> None:
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr, format="%(levelname)s:     %(name)s: %(message)s")
    engine = AsyncLLMEngine.from_config(engine_config)
    app = build_app(engine, server_config)
    llm = engine.engine
    logger.info("serving %r from %s on %s, max_model_len %d, max_num_seqs %d, %d KV blocks",
                server_config.served_model_name, engine_config.model, llm.device, llm.max_model_len,
                engine_config.max_num_seqs, llm.scheduler.block_manager.num_blocks)
    logger.info("API keys: %s", f"{len(server_config.api_keys)} (Bearer auth on /v1, /tokenize, /detokenize, "
                "/metrics)" if server_config.api_keys else "none: every client is served")
    logger.info("OpenAI-compatible API at http://%s:%d/v1 (docs at /docs)", host, port)
    _succeed_after_drain()
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def _succeed_after_drain() -> None:
    """uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handler installed before it, which by
    default kills the process with it. A drained server has done its job: ignore the re-raise and exit 0."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
