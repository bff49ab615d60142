"""`vlmserve serve`: load the engine, build the app, run it on uvicorn until SIGTERM/SIGINT drains it, or until
the engine dies (a step failed, a tensor-parallel worker exited): then /health and every request answer 503 for
DEAD_ENGINE_GRACE_S, the server shuts down and the process exits 1 — within HARD_EXIT_S even when a step is stuck
in a collective with a dead peer and cannot be drained.

With `drain_grace_s`, the first SIGTERM/SIGINT first turns /ready to 503 and the server goes on serving for that
long (DrainingServer), then drains. A drain waits at most `shutdown_timeout_s` for the requests in flight (a client that stops reading would hold it
forever), then cancels them. Once the engine is stopped the process ends at once, without the interpreter's
teardown of torch and the model (seconds, for nothing).
"""

import asyncio
import logging
import os
import signal
import sys
import threading
from typing import NoReturn

import uvicorn

from vlmserve.config import EngineConfig
from vlmserve.engine.async_engine import AsyncLLMEngine
from vlmserve.server.app import build_app
from vlmserve.server.config import DEFAULT_SHUTDOWN_TIMEOUT_S, ServerConfig

logger = logging.getLogger("vlmserve.server")

DEAD_ENGINE_GRACE_S = 2.0
HARD_EXIT_S = 30.0
WATCH_INTERVAL_S = 0.2


def serve(engine_config: EngineConfig, server_config: ServerConfig, *, host: str, port: int,
          log_level: str = "info", shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
          drain_grace_s: float = 0.0) -> NoReturn:
    """Serve until stopped, then exit the process: 0 after a drain, 1 when the engine died, 3 when uvicorn could
    not start (e.g. the port is taken)."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr, format="%(levelname)s:     %(name)s: %(message)s")
    engine = AsyncLLMEngine.from_config(engine_config)
    app = build_app(engine, server_config)
    logger.info("serving %r from %s on %s, max_model_len %d, max_num_seqs %d, %d KV blocks",
                server_config.served_model_name, engine_config.model, engine.device, engine.max_model_len,
                engine_config.max_num_seqs, engine.stats().num_kv_blocks)
    logger.info("API keys: %s", f"{len(server_config.api_keys)} (Bearer auth on /v1, /tokenize, /detokenize, "
                "/metrics)" if server_config.api_keys else "none: every client is served")
    logger.info("OpenAI-compatible API at http://%s:%d/v1 (docs at /docs)", host, port)
    _succeed_after_drain()
    server = DrainingServer(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=shutdown_timeout_s), drain_grace_s)
    status = asyncio.run(_serve_until_engine_dies(server, engine))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, whose first SIGTERM/SIGINT turns /ready to 503 and keeps serving for `grace_s` before the
    drain starts, so that load balancers stop routing here first; a second signal starts the drain at once."""

    def __init__(self, config: uvicorn.Config, grace_s: float):
        super().__init__(config)
        self.grace_s = grace_s

    def handle_exit(self, sig, frame) -> None:
        state = self.config.app.state
        if self.grace_s > 0 and not state.draining:
            state.draining = True
            logger.info("signal %d: /ready answers 503; draining in %gs", sig, self.grace_s)
            timer = threading.Timer(self.grace_s, setattr, (self, "should_exit", True))
            timer.daemon = True
            timer.start()
            return
        state.draining = True
        super().handle_exit(sig, frame)


async def _serve_until_engine_dies(server: uvicorn.Server, engine: AsyncLLMEngine) -> int:
    watch = asyncio.create_task(_stop_when_engine_dies(server, engine))
    try:
        await server.serve()
    finally:
        watch.cancel()
    if not server.started:
        return 3  # uvicorn's startup-failure status (e.g. the port is taken)
    return 0 if engine.failure is None else 1


async def _stop_when_engine_dies(server: uvicorn.Server, engine: AsyncLLMEngine) -> None:
    while engine.failure is None:
        await asyncio.sleep(WATCH_INTERVAL_S)
    logger.error("%s; answering 503 for %gs, then exiting", engine.failure, DEAD_ENGINE_GRACE_S)
    timer = threading.Timer(DEAD_ENGINE_GRACE_S + HARD_EXIT_S, os._exit, (1,))
    timer.daemon = True
    timer.start()
    await asyncio.sleep(DEAD_ENGINE_GRACE_S)
    server.should_exit = True


def _succeed_after_drain() -> None:
    """uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handler installed before it, which by
    default kills the process with it. A drained server has done its job: ignore the re-raise and exit 0."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
