"""Request and response bodies of OpenAI's Files and Batches APIs, as this server takes and answers them."""

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from vlmserve.server.batch_input import ENDPOINTS
from vlmserve.server.protocol import Strict
from vlmserve.server.request_types import Integer, Text

MAX_LIST = 100  # OpenAI's largest page
WINDOW = re.compile(r"^([1-9][0-9]{0,6})([smh])$")
SECONDS = {"s": 1, "m": 60, "h": 3600}
EXPIRES_AFTER_S = (3600, 2592000)  # a file's lifetime: 1 hour to 30 days, as OpenAI's


class ExpiresAfter(Strict):
    anchor: Literal["created_at"]
    seconds: Integer = Field(ge=EXPIRES_AFTER_S[0], le=EXPIRES_AFTER_S[1])


class CreateBatchRequest(Strict):
    input_file_id: Text
    endpoint: Literal[ENDPOINTS]
    completion_window: Text = Field(description="OpenAI's '24h', or any other number of s, m or h: lines not "
                                                "answered by then expire")
    metadata: dict[Text, Text] | None = Field(None, max_length=16)
    output_expires_after: ExpiresAfter | None = None

    @field_validator("completion_window")
    @classmethod
    def _a_duration(cls, window: str) -> str:
        if not WINDOW.match(window):
            raise ValueError("must be a duration such as '24h' (a whole number of s, m or h)")
        return window

    @property
    def window_s(self) -> int:
        number, unit = WINDOW.match(self.completion_window).groups()
        return int(number) * SECONDS[unit]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class DeletedFile(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class BatchObject(BaseModel):
    """OpenAI's batch; `usage` also holds `num_images` and `cost`, summed over the answered lines."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None = None
    input_file_id: str
    completion_window: str
    status: Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                    "cancelled"]
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: Any = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: dict[str, int]
    usage: dict[str, Any]
    metadata: dict[str, str] | None = None


class ListPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[Any]
    first_id: str | None
    last_id: str | None
    has_more: bool


def page(items: list[dict], limit: int) -> ListPage:
    """One page of a listing fetched with limit + 1 items (the extra one says whether more follow)."""
    shown = items[:limit]
    return ListPage(data=shown, first_id=shown[0]["id"] if shown else None,
                    last_id=shown[-1]["id"] if shown else None, has_more=len(items) > limit)
