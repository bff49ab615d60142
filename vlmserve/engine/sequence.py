"""A request's sequence: its tokens, its KV blocks and where it stands. Pure Python (no torch)."""

import enum
import itertools
from dataclasses import dataclass, field
from typing import Any

from vlmserve.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class MultiModalInputs:
    """A prompt's images, ready for the vision encoder, and which tokens attend to which image."""

    pixel_values: Any  # [images, tiles, 3, H, W] tensor
    aspect_ratio_ids: Any  # [images]
    aspect_ratio_mask: Any  # [images, tiles]
    num_tiles: list[int]
    token_ranges: list[tuple[int, int]]  # per image: half-open prompt positions that attend to it
    content_hashes: list[str]


@dataclass(eq=False)  # compared by identity: the scheduler's list operations must not compare token lists
class Sequence:
    seq_id: int
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    multimodal: MultiModalInputs | None = None
    index: int = 0  # which of the request's n completions
    priority: int = 0  # lower runs first (vLLM's convention); 0 unless the engine schedules by priority
    background: bool = False  # batch work: ranked below every interactive sequence
    stop_token_ids: tuple[int, ...] = ()  # tokens that end this sequence (EOS unless ignore_eos, plus stop_token_ids)
    output_token_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose K/V is in the cache (computed, or found cached); the scheduler's
    block_hashes: list[bytes] = field(default_factory=list)  # prefix-cache keys of its full blocks, in order
    num_registered_blocks: int = 0  # leading blocks already offered to the prefix cache
    image_entries: list[Any] = field(default_factory=list)  # per image: the block manager's ImageEntry, when held
    status: SequenceStatus = SequenceStatus.WAITING

    _ids = itertools.count()

    @classmethod
    def next_id(cls) -> int:
        return next(cls._ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_ids_between(self, start: int, end: int) -> list[int]:
        """all_token_ids[start:end] without building the whole list (a decode step needs one token)."""
        split = len(self.prompt_token_ids)
        if start >= split:
            return self.output_token_ids[start - split : end - split]
        return self.prompt_token_ids[start:end] + self.output_token_ids[: max(end - split, 0)]

    @property
    def rank(self) -> tuple[bool, int, int]:
        """The scheduler's order: interactive before background, then priority, then arrival."""
        return self.background, self.priority, self.seq_id

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    def image_keys(self, end: int, every_image: bool) -> tuple[tuple[str, int], ...]:
        """(content hash, first attending position) of the images that tokens before `end` may attend to.

        Under Meta's rule a token sees only the images whose range it falls in, so a prefix ending before an
        image's range is shared across different images; `every_image` is for transformers' rule, where text
        before the first image attends to all of them.
        """
        mm = self.multimodal
        if mm is None:
            return ()
        return tuple((digest, start) for digest, (start, _) in zip(mm.content_hashes, mm.token_ranges)
                     if every_image or start < end)
