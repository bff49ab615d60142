"""Runs the server's batches in the background, line by line through the server's own endpoints (asgi_call).

Lines run as background requests: the engine ranks them below every interactive request and preempts them
first. At most `concurrency` lines of all batches are in flight at once. Each answer is recorded as it
completes (BatchStore); a batch whose lines are all answered is finalized: its output and error files written
(with ids fixed by the batch's, so finalizing again after a crash rewrites the same files), then its end state.

A batch ends `completed`, `failed` (its input file expired before it ran), `cancelled` (cancel() stops its
lines; their answers so far are kept) or `expired` (past its completion window: the lines not answered go to the
error file as `batch_expired`). Stopping the runner (the
server shuts down) abandons the lines in flight unrecorded; `start()` on the next run takes every unfinished
batch up again where it stopped. A line answered 503 (the engine stopped) is not recorded either.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp

from vlmserve.server.asgi_call import call_app
from vlmserve.server.auth import BATCH_OWNER
from vlmserve.server.batch_input import BatchLine, read_lines
from vlmserve.server.batch_store import BatchStore, LineResult
from vlmserve.server.errors import error_body
from vlmserve.server.file_store import FileStore

logger = logging.getLogger("vlmserve.server")

EXPIRED = {"code": "batch_expired", "message": "This request could not be executed before the completion window "
                                               "expired."}
Prepare = Callable[..., Awaitable]


class EngineStopped(Exception):
    """A line was answered 503: the engine is not running, the batch waits for the next start."""


class InputGone(Exception):
    """The batch's input file is gone from disk (it expired): the batch fails."""


class BatchRunner:
    def __init__(self, app: ASGIApp, batches: BatchStore, files: FileStore, prepare: Prepare, concurrency: int):
        self.app, self.batches, self.files, self.prepare = app, batches, files, prepare
        self._slots = asyncio.Semaphore(concurrency)  # lines in flight, all batches together
        self._tasks: dict[str, asyncio.Task] = {}
        self._cancelled: set[str] = set()  # batches cancel() was called for

    async def start(self) -> None:
        """Take up every batch a previous run left unfinished."""
        for batch_id in await self.prepare(self.batches.unfinished):
            self.submit(batch_id)

    def submit(self, batch_id: str) -> None:
        task = self._tasks[batch_id] = asyncio.create_task(self._run(batch_id), name=f"batch {batch_id}")
        task.add_done_callback(lambda _: self._tasks.pop(batch_id, None))

    def cancel(self, batch_id: str) -> None:
        """Stop a batch whose status is already `cancelling`: its lines are abandoned, then it is finalized. Once
        per batch: a second cancellation would interrupt the first one's finalizing."""
        if batch_id in self._cancelled:
            return
        self._cancelled.add(batch_id)
        task = self._tasks.get(batch_id)
        if task is None:
            self.submit(batch_id)
        else:
            task.cancel()

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, batch_id: str) -> None:
        try:
            end = await self._until_answered(batch_id)
            await asyncio.shield(self._finalize(batch_id, end))  # a cancel() arriving now is too late to matter
        except InputGone as gone:
            await self._set(batch_id, status="failed", failed_at=_now(), errors={"object": "list", "data": [
                {"code": "input_file_missing", "message": str(gone), "param": "input_file_id", "line": None}]})
        except EngineStopped:
            logger.warning("batch %s paused: the engine stopped; it resumes when the server starts again", batch_id)
        except Exception:  # noqa: BLE001 - the batch stays unfinished, to be taken up by the next start
            logger.exception("batch %s stopped on an internal error; it resumes when the server starts again",
                             batch_id)

    async def _until_answered(self, batch_id: str) -> str:
        """Answer the batch's lines: "completed", "expired", or "cancelled" when cancel() stopped it (a
        cancellation while the batch is not `cancelling` is the runner stopping: it propagates)."""
        try:
            batch = await self._set(batch_id, only_from=("validating",), status="in_progress",
                                    in_progress_at=_now())
            if batch["status"] == "in_progress":
                return await self._answer_lines(batch)
            return "cancelled" if batch["status"] == "cancelling" else "completed"  # or it was finalizing
        except asyncio.CancelledError:
            current = await asyncio.shield(self.prepare(self.batches.get, batch_id))
            if current["status"] != "cancelling":
                raise
            asyncio.current_task().uncancel()
            return "cancelled"

    async def _answer_lines(self, batch: dict) -> str:
        owner = await self.prepare(self.batches.owner, batch["id"])
        answered = await self.prepare(self.batches.answered_lines, batch["id"])
        path = self.files.path(batch["input_file_id"])
        if not await self.prepare(path.exists):
            raise InputGone(f"the input file {batch['input_file_id']} is gone (it expired) before the batch ran")
        lines = read_lines(path, batch["endpoint"])
        in_flight: set[asyncio.Task] = set()
        try:
            async with asyncio.timeout(max(batch["expires_at"] - time.time(), 0)):
                while (line := await self.prepare(next, lines, None)) is not None:
                    if line.index in answered:
                        continue
                    await self._slots.acquire()
                    task = asyncio.create_task(self._answer(batch["id"], owner, line))
                    in_flight.add(task)
                    task.add_done_callback(self._line_done(in_flight))
                    await self._raise_failures(in_flight)
                await asyncio.gather(*in_flight)
            return "completed"
        except TimeoutError:
            return "expired"
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    def _line_done(self, in_flight: set[asyncio.Task]):
        def done(task: asyncio.Task) -> None:
            self._slots.release()
            if task.cancelled() or task.exception() is None:
                in_flight.discard(task)  # a failed one stays, for _raise_failures
        return done

    @staticmethod
    async def _raise_failures(in_flight: set[asyncio.Task]) -> None:
        for task in [task for task in in_flight if task.done()]:
            await task

    async def _answer(self, batch_id: str, owner: str, line: BatchLine) -> None:
        result = await answer_line(self.app, line, **{BATCH_OWNER: owner})
        if result.output["response"]["status_code"] == 503:
            raise EngineStopped()
        await self.prepare(self.batches.record, batch_id, result)

    async def _finalize(self, batch_id: str, end: str) -> None:
        if end == "completed":
            batch = await self._set(batch_id, only_from=("in_progress",), status="finalizing", finalizing_at=_now())
            end = "cancelled" if batch["status"] == "cancelling" else end
        batch, owner = await self.prepare(self.batches.get, batch_id), await self.prepare(self.batches.owner, batch_id)
        if end == "expired":
            await self.prepare(self._record_expired, batch)
        files = {}
        for kind, succeeded in (("output", True), ("error", False)):
            outputs = await self.prepare(self.batches.outputs, batch_id, succeeded)
            if outputs:
                record = await self.prepare(
                    self.files.save, owner, f"{batch_id}_{kind}.jsonl", "batch_output",
                    (f"{output}\n".encode() for output in outputs), batch.get("output_expires_after_s"),
                    f"file-{batch_id.removeprefix('batch_')}-{kind}")
                files[f"{kind}_file_id"] = record.id
        ended_at = {"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at"}[end]
        await self._set(batch_id, status=end, **files, **{ended_at: _now()})

    def _record_expired(self, batch: dict) -> None:
        answered = self.batches.answered_lines(batch["id"])
        for line in read_lines(self.files.path(batch["input_file_id"]), batch["endpoint"]):
            if line.index not in answered:
                self.batches.record(batch["id"], LineResult(line.index, False, {
                    "id": f"batch_req_{uuid.uuid4().hex}", "custom_id": line.custom_id, "response": None,
                    "error": EXPIRED}))

    async def _set(self, batch_id: str, only_from: tuple[str, ...] | None = None, **fields) -> dict:
        return await self.prepare(self.batches.update, batch_id, only_from, **fields)


async def answer_line(app: ASGIApp, line: BatchLine, **scope) -> LineResult:
    """The line's request answered by `app` (in process), as its output line; the server's batches and
    `vlmserve run-batch` both answer lines here."""
    if line.body.get("stream"):
        status, body = 400, error_body(400, "stream is not supported in a batch: each line's answer is written whole "
                                            "to the output file", "stream")
    else:
        status, body = await call_app(app, line.url, line.body, **scope)
    return _line_result(line, status, body)


def _line_result(line: BatchLine, status: int, body) -> LineResult:
    request_id = body.get("id") if isinstance(body, dict) and isinstance(body.get("id"), str) else None
    output = {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": line.custom_id,
              "response": {"status_code": status, "request_id": request_id or f"req_{uuid.uuid4().hex}",
                           "body": body}, "error": None}
    usage = body.get("usage") if isinstance(body, dict) and isinstance(body.get("usage"), dict) else {}
    return LineResult(line.index, 200 <= status < 300, output,
                      input_tokens=usage.get("prompt_tokens", usage.get("input_tokens", 0)),
                      output_tokens=usage.get("completion_tokens", usage.get("output_tokens", 0)),
                      num_images=usage.get("num_images", 0), cost=usage.get("cost", 0.0))


def _now() -> int:
    return int(time.time())
