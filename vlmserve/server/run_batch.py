"""`vlmserve run-batch`: an OpenAI batch input file answered offline, without a server socket.

Each line goes through the same app the server runs, in process (batch_runner.answer_line), so an offline
answer is the server's answer to the same request: chat, completions and responses lines, their errors, usage and
cost. Every answered line, succeeded or not, is appended to the output file (as vLLM's run_batch writes it) and
flushed to disk at once; a rerun skips the custom_ids the output already holds, after cutting off a last line a
crash left half written. A line answered 503 (the engine stopped) is not written: the run ends with an error.
"""

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from vlmserve.config import EngineConfig
from vlmserve.engine.async_engine import AsyncLLMEngine
from vlmserve.server.app import build_app
from vlmserve.server.batch_input import BatchLine, check_input, read_lines
from vlmserve.server.batch_runner import answer_line
from vlmserve.server.batch_store import LineResult
from vlmserve.server.config import ServerConfig


class BatchInterrupted(RuntimeError):
    """The engine stopped mid-run; what was answered is in the output, and a rerun goes on from there."""


@dataclass
class BatchSummary:
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0  # already in the output file
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    started: float = field(default_factory=time.monotonic)  # when answering began

    def add(self, result: LineResult) -> None:
        self.succeeded += result.succeeded
        self.failed += not result.succeeded
        self.input_tokens += result.input_tokens
        self.output_tokens += result.output_tokens
        self.cost += result.cost

    def describe(self, output: str | Path) -> str:
        seconds = time.monotonic() - self.started
        return (f"{self.succeeded} lines ok, {self.failed} failed, {self.skipped} already in {output}; "
                f"{self.input_tokens} input + {self.output_tokens} output tokens, cost ${self.cost:.6f}, "
                f"{seconds:.1f} s")


def run_batch(engine_config: EngineConfig, server_config: ServerConfig, input_path: str | Path,
              output_path: str | Path, use_tqdm: bool = True) -> BatchSummary:
    """Answer every line of `input_path` not yet in `output_path`; BatchInputError (a ValueError) for an input
    file that cannot run, before the model is loaded."""
    check_input(input_path, None, sys.maxsize)
    return asyncio.run(_run(engine_config, server_config, Path(input_path), Path(output_path), use_tqdm))


async def _run(engine_config: EngineConfig, server_config: ServerConfig, input_path: Path, output_path: Path,
               use_tqdm: bool) -> BatchSummary:
    done = answered_custom_ids(output_path)
    lines = [line for line in read_lines(input_path) if line.custom_id not in done]
    summary = BatchSummary(skipped=len(done))
    if not lines:
        return summary
    engine = AsyncLLMEngine.from_config(engine_config)
    app = build_app(engine, server_config)
    summary.started = time.monotonic()  # rates count from a loaded model
    slots = asyncio.Semaphore(engine.config.max_num_seqs)
    try:
        with open(output_path, "ab") as output, tqdm(total=len(lines), unit="line", disable=not use_tqdm) as bar:
            async def answer(line: BatchLine) -> None:
                async with slots:
                    result = await answer_line(app, line)
                if result.output["response"]["status_code"] == 503:  # not the line's answer: resumed by a rerun
                    raise BatchInterrupted(f"the engine stopped at line {line.custom_id!r} "
                                           f"({result.output['response']['body']}); rerun to go on from there")
                output.write(json.dumps(result.output).encode() + b"\n")
                output.flush()
                os.fsync(output.fileno())
                summary.add(result)
                bar.update()
                rate = summary.output_tokens / max(time.monotonic() - summary.started, 1e-9)
                bar.set_postfix_str(f"{rate:.1f} tok/s, ${summary.cost:.6f}", refresh=False)

            tasks = [asyncio.ensure_future(answer(line)) for line in lines]
            try:
                await asyncio.gather(*tasks)
            finally:  # one failed: stop the others before the output file closes
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await engine.shutdown()
        await app.state.fetcher.aclose()
        app.state.client.close()
    return summary


def answered_custom_ids(output_path: Path) -> set[str]:
    """The custom_ids an earlier run wrote; a last line without its newline (the run died writing it) is cut."""
    if not output_path.exists():
        return set()
    data = output_path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) < len(data):
        with open(output_path, "r+b") as output:
            output.truncate(len(whole))
    return {json.loads(line)["custom_id"] for line in whole.splitlines() if line.strip()}
