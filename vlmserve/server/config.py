"""What the HTTP server enforces on top of the engine: names, keys, prices and per-request limits."""

from dataclasses import dataclass, field

from vlmserve.server.image_fetch import ImageFetchConfig
from vlmserve.server.pricing import PriceTable
from vlmserve.server.response_store import DEFAULT_MAX_RESPONSES, DEFAULT_RETENTION_DAYS

MiB = 1 << 20

# Defaults from the hosted model page (shared/reference): 16 384 max output tokens. The page names no image
# count; Meta advises one image per inference and each Mllama image costs 4 tiles x 1601 cross-attention K/V
# rows, so the default caps a request at 8 images.
DEFAULT_MAX_OUTPUT_TOKENS = 16384
DEFAULT_MAX_IMAGES_PER_REQUEST = 8
DEFAULT_MAX_IMAGE_BYTES = 20 * MiB
DEFAULT_MAX_QUEUE = 256
# Prompt text past this many characters per token of the context is refused before it is tokenized: English
# averages ~4 characters per Llama 3 token, code ~3, and tokenizing is the one step whose cost grows with it.
PROMPT_CHARS_PER_TOKEN = 8
DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0
# OpenAI's limits on a batch input file.
DEFAULT_MAX_BATCH_FILE_BYTES = 200 * 1000 * 1000
DEFAULT_MAX_BATCH_LINES = 50_000


@dataclass(frozen=True)
class ServerConfig:
    """Validated once where the server is built; the engine's own limits (context, pixels) live in EngineConfig.

    `max_queue` counts sequences (a request with n completions counts n) admitted beyond the engine's
    `max_num_seqs` running slots: one more gets 429. `max_prompt_chars` None: PROMPT_CHARS_PER_TOKEN per token of
    the context. `data_dir`: where stored responses live (None: the Responses API stores nothing), kept for
    `response_retention_days`, the newest `max_stored_responses` of them, and the Files and Batches APIs' files
    and batches (None: those APIs are off), a batch input file being at most `max_batch_file_bytes` and
    `max_batch_lines` requests.
    """

    served_model_name: str
    api_keys: tuple[str, ...] = ()
    pricing: PriceTable = field(default_factory=PriceTable)
    max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS
    max_images_per_request: int = DEFAULT_MAX_IMAGES_PER_REQUEST
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_queue: int = DEFAULT_MAX_QUEUE
    max_prompt_chars: int | None = None
    image_fetch: ImageFetchConfig = field(default_factory=ImageFetchConfig)
    data_dir: str | None = None
    max_stored_responses: int = DEFAULT_MAX_RESPONSES
    response_retention_days: float = DEFAULT_RETENTION_DAYS
    max_batch_file_bytes: int = DEFAULT_MAX_BATCH_FILE_BYTES
    max_batch_lines: int = DEFAULT_MAX_BATCH_LINES

    def __post_init__(self):
        if not self.served_model_name:
            raise ValueError("served_model_name must be a non-empty string")
        if any(not key for key in self.api_keys):
            raise ValueError("an API key must be a non-empty string")
        if self.max_prompt_chars is not None and self.max_prompt_chars < 1:
            raise ValueError(f"max_prompt_chars must be >= 1 or None, got {self.max_prompt_chars}")
        if self.response_retention_days <= 0:
            raise ValueError(f"response_retention_days must be > 0, got {self.response_retention_days}")
        for name in ("max_output_tokens", "max_image_bytes", "max_stored_responses", "max_batch_file_bytes",
                     "max_batch_lines"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_images_per_request", "max_queue"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def max_request_bytes(self, max_prompt_chars: int) -> int:
        """The largest request body worth reading: every image at its limit as base64, the prompt text at its limit
        with every character JSON-escaped (6 bytes, \\uXXXX), and 1 MiB for everything else."""
        return self.max_images_per_request * (self.max_image_bytes * 4 // 3 + 64) + 6 * max_prompt_chars + MiB
