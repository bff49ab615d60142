"""/v1/files and /v1/batches: OpenAI's Files and Batches APIs, on a server started with --data-dir.

Files and batches belong to the API key that created them (every caller shares one owner on a server without
keys): another key is told they do not exist. Uploads take `purpose: "batch"` only, up to --max-batch-file-bytes;
a batch's input file is checked whole when the batch is created (batch_input), then the BatchRunner answers it.
"""

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse
from starlette.datastructures import UploadFile

from vlmserve.server.auth import authenticate
from vlmserve.server.batch_input import BatchInputError, check_input
from vlmserve.server.batch_protocol import (
    EXPIRES_AFTER_S,
    MAX_LIST,
    BatchObject,
    CreateBatchRequest,
    DeletedFile,
    ExpiresAfter,
    FileObject,
    ListPage,
    page,
)
from vlmserve.server.batch_runner import BatchRunner
from vlmserve.server.batch_store import FILE_NAME, SCHEMA, BatchStore
from vlmserve.server.engine_client import EngineClient
from vlmserve.server.errors import APIError
from vlmserve.server.file_store import FileStore
from vlmserve.server.middleware import UPLOAD_PATH
from vlmserve.server.sqlite_db import Database

UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"], "properties": {
        "file": {"type": "string", "format": "binary"}, "purpose": {"type": "string", "enum": ["batch"]},
        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
        "expires_after[seconds]": {"type": "integer", "minimum": EXPIRES_AFTER_S[0],
                                   "maximum": EXPIRES_AFTER_S[1]}}}}}}}
CANCELLABLE = ("validating", "in_progress")
NOT_STORING = "this server keeps no files: start it with --data-dir to use the Files and Batches APIs"
UPLOAD_CHUNK = 1 << 20
UPLOAD_OVERHEAD = 1 << 20  # multipart framing and the form's other fields, beyond the file itself


@dataclass
class Batches:
    """The Files and Batches APIs' state: one database, the files on disk, the batches and their runner."""

    db: Database
    files: FileStore
    store: BatchStore
    runner: BatchRunner

    @classmethod
    def open(cls, app: FastAPI, data_dir: str, client: EngineClient) -> "Batches":
        db = Database(data_dir, FILE_NAME, SCHEMA)
        files, store = FileStore(db, data_dir), BatchStore(db)
        return cls(db, files, store, BatchRunner(app, store, files, client.prepare, client.engine.config.max_num_seqs))


def add_batch_routes(app: FastAPI, errors: dict) -> None:
    responses = {**errors, 409: {"model": errors[400]["model"]}}
    app.post(UPLOAD_PATH, responses=responses, response_model=FileObject, openapi_extra=UPLOAD_BODY)(upload_file)
    app.get("/v1/files", responses=responses, response_model=ListPage)(list_files)
    app.get("/v1/files/{file_id}", responses=responses, response_model=FileObject)(retrieve_file)
    app.get("/v1/files/{file_id}/content", responses=responses, response_class=FileResponse)(file_content)
    app.delete("/v1/files/{file_id}", responses=responses, response_model=DeletedFile)(delete_file)
    app.post("/v1/batches", responses=responses, response_model=BatchObject)(create_batch)
    app.get("/v1/batches", responses=responses, response_model=ListPage)(list_batches)
    app.get("/v1/batches/{batch_id}", responses=responses, response_model=BatchObject)(retrieve_batch)
    app.post("/v1/batches/{batch_id}/cancel", responses=responses, response_model=BatchObject)(cancel_batch)


def _state(request: Request) -> tuple[Batches, EngineClient]:
    if request.app.state.batches is None:
        raise APIError(404, NOT_STORING)
    return request.app.state.batches, request.app.state.client


async def upload_file(request: Request, key: str = Depends(authenticate)) -> FileObject:
    """multipart/form-data: `file`, `purpose` ("batch"), optional `expires_after[anchor]` / `[seconds]`."""
    batches, client = _state(request)
    form = await request.form(max_files=1, max_fields=8)
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise APIError(400, "send the file as the multipart field 'file'", "file")
    if purpose != "batch":
        raise APIError(400, f"purpose must be 'batch' (this server keeps files for batches only), got {purpose!r}",
                       "purpose")
    limit = client.config.max_batch_file_bytes
    if upload.size is not None and upload.size > limit:
        raise APIError(413, f"the file has {upload.size} bytes; this server takes at most {limit} "
                            "(see --max-batch-file-bytes)", "file")
    expires_after = _expires_after(form.get("expires_after[anchor]"), form.get("expires_after[seconds]"))
    chunks = iter(lambda: upload.file.read(UPLOAD_CHUNK), b"")
    record = await client.prepare(batches.files.save, key, Path(upload.filename or "upload.jsonl").name, purpose,
                                  chunks, expires_after)
    return FileObject(**record.as_object())


def _expires_after(anchor, seconds) -> int | None:
    if anchor is None and seconds is None:
        return None
    try:
        return ExpiresAfter(anchor=anchor, seconds=int(seconds)).seconds
    except (TypeError, ValueError):  # pydantic's ValidationError is a ValueError
        raise APIError(400, f"expires_after needs anchor 'created_at' and seconds from {EXPIRES_AFTER_S[0]} to "
                            f"{EXPIRES_AFTER_S[1]}", "expires_after") from None


async def list_files(request: Request, key: str = Depends(authenticate), purpose: str | None = None,
                     after: str | None = None, limit: int = Query(10000, ge=1, le=10000),
                     order: str = Query("desc", pattern="^(asc|desc)$")) -> ListPage:
    batches, client = _state(request)
    records = await client.prepare(batches.files.listing, key, purpose, after, limit + 1, order == "desc")
    return page([record.as_object() for record in records], limit)


async def retrieve_file(file_id: str, request: Request, key: str = Depends(authenticate)) -> FileObject:
    return FileObject(**(await _file(request, key, file_id)).as_object())


async def file_content(file_id: str, request: Request, key: str = Depends(authenticate)) -> FileResponse:
    record = await _file(request, key, file_id)
    batches, _ = _state(request)
    return FileResponse(batches.files.path(record.id), media_type="application/octet-stream",
                        filename=record.filename)


async def delete_file(file_id: str, request: Request, key: str = Depends(authenticate)) -> DeletedFile:
    batches, client = _state(request)
    await _file(request, key, file_id)
    running = await client.prepare(batches.store.using_input, file_id)
    if running:
        raise APIError(409, f"file {file_id!r} is the input of batch {running!r}, which has not finished; cancel "
                            "it first", "file_id")
    await client.prepare(batches.files.delete, key, file_id)
    return DeletedFile(id=file_id)


async def _file(request: Request, key: str, file_id: str):
    batches, client = _state(request)
    record = await client.prepare(batches.files.get, key, file_id)
    if record is None:
        raise APIError(404, f"no file has id {file_id!r}", "file_id")
    return record


async def create_batch(body: CreateBatchRequest, request: Request, key: str = Depends(authenticate)) -> BatchObject:
    batches, client = _state(request)
    record = await client.prepare(batches.files.get, key, body.input_file_id)
    if record is None:
        raise APIError(404, f"no file has id {body.input_file_id!r}", "input_file_id")
    if record.purpose != "batch":
        raise APIError(400, f"file {record.id!r} has purpose {record.purpose!r}; a batch's input needs 'batch'",
                       "input_file_id")
    try:
        total = await client.prepare(check_input, batches.files.path(record.id), body.endpoint,
                                     client.config.max_batch_lines)
    except BatchInputError as error:
        raise APIError(400, f"input file {record.id}: {error}", "input_file_id") from None
    now = int(time.time())
    batch = {"id": f"batch_{uuid.uuid4().hex}", "object": "batch", "endpoint": body.endpoint,
             "model": client.config.served_model_name, "input_file_id": record.id,
             "completion_window": body.completion_window, "status": "validating", "created_at": now,
             "expires_at": now + body.window_s, "metadata": body.metadata, "request_counts": {"total": total},
             "output_expires_after_s": None if body.output_expires_after is None else body.output_expires_after.seconds}
    await client.prepare(batches.store.create, key, batch)
    batches.runner.submit(batch["id"])
    return BatchObject(**await client.prepare(batches.store.get, batch["id"]))


async def list_batches(request: Request, key: str = Depends(authenticate), after: str | None = None,
                       limit: int = Query(20, ge=1, le=MAX_LIST)) -> ListPage:
    batches, client = _state(request)
    return page(await client.prepare(batches.store.listing, key, after, limit + 1), limit)


async def retrieve_batch(batch_id: str, request: Request, key: str = Depends(authenticate)) -> BatchObject:
    return BatchObject(**await _batch(request, key, batch_id))


async def cancel_batch(batch_id: str, request: Request, key: str = Depends(authenticate)) -> BatchObject:
    """A running batch turns `cancelling` at once, and `cancelled` when its lines in flight have stopped."""
    batches, client = _state(request)
    if (batch := await _batch(request, key, batch_id))["status"] == "cancelling":
        return BatchObject(**batch)  # asked again: nothing changes
    batch = await client.prepare(batches.store.update, batch_id, only_from=CANCELLABLE, status="cancelling",
                                 cancelling_at=int(time.time()))
    if batch["status"] != "cancelling":
        raise APIError(409, f"batch {batch_id!r} is {batch['status']}; only a validating or in-progress batch can "
                            "be cancelled", "batch_id")
    batches.runner.cancel(batch_id)
    return BatchObject(**batch)


async def _batch(request: Request, key: str, batch_id: str) -> dict:
    batches, client = _state(request)
    batch = await client.prepare(batches.store.get, batch_id, key)
    if batch is None:
        raise APIError(404, f"no batch has id {batch_id!r}", "batch_id")
    return batch
