"""Hands out fixed-size KV-cache blocks to sequences and shares full blocks between them. Pure Python (no torch).

Prefix caching: a full block is keyed by a hash chain over the tokens up to its end and the images those
tokens may attend to, so two sequences with the same image + text prefix map to the same physical blocks.
Blocks are reference-counted; a block nobody holds goes to the free queue but keeps its contents and key until
it is handed out again, so a later request (or a preempted one coming back) can still find it. The free queue
is least-recently-freed first, and a sequence's tail blocks are freed before its head.

Images: each distinct image a sequence holds takes `blocks_per_image` blocks of the same pool for its
cross-attention K/V (the model runner writes them there), so vision state is counted against the same memory
budget as text. Image entries are keyed by content hash and reference-counted like blocks: the same image in
another request reuses them (the encoder cache), and a released image stays findable until its blocks are reused.
"""

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from vlmserve.engine.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    key: bytes | None = None  # prefix-cache key while the block holds a registered full block
    image: str | None = None  # content hash of the image whose K/V the block holds


@dataclass(eq=False)
class ImageEntry:
    content_hash: str
    block_ids: list[int]
    ref_count: int = 0
    encoded: bool = False  # set by the model runner once the image's K/V are written to its blocks


@dataclass
class PrefixCacheStats:
    queried_tokens: int = 0  # prompt tokens looked up when a sequence was first scheduled
    hit_tokens: int = 0  # of those, tokens found in cached blocks (their K/V not recomputed)
    queried_images: int = 0  # images a sequence needed when it was admitted
    hit_images: int = 0  # of those, images whose K/V were already in the pool (not encoded again)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, *, blocks_per_image: int = 0,
                 enable_prefix_caching: bool = True, key_every_image: bool = False):
        self.num_blocks, self.block_size, self.blocks_per_image = num_blocks, block_size, blocks_per_image
        self.enable_prefix_caching = enable_prefix_caching
        self.key_every_image = key_every_image  # see Sequence.image_keys
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_ids: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[bytes, int] = {}  # key -> block id
        self.images: dict[str, ImageEntry] = {}  # content hash -> entry, held or still findable
        self.stats = PrefixCacheStats()

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_ids)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids holding the longest cached prefix of a sequence that holds no blocks yet.

        At least the last token is left out, so a step always computes something to sample from.
        """
        if not self.enable_prefix_caching or seq.block_table:
            return []
        hits = []
        for index in range((seq.num_tokens - 1) // self.block_size):
            block_id = self.cached.get(self._block_key(seq, index))
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def image_blocks(self, content_hashes: list[str]) -> int:
        """Blocks the K/V of these images take (an image sent twice is held once)."""
        return len(set(content_hashes)) * self.blocks_per_image

    def can_allocate(self, seq: Sequence, num_tokens: int, hits: list[int] = ()) -> bool:
        """Whether the sequence can hold `num_tokens` tokens, taking the cached blocks `hits` first (and, when
        it holds nothing yet, its images)."""
        new_blocks = max(self.blocks_for(num_tokens) - len(seq.block_table) - len(hits), 0)
        revived = sum(1 for block_id in hits if self.blocks[block_id].ref_count == 0)
        if not seq.image_entries and self.blocks_per_image:
            for content_hash in _distinct_images(seq):
                entry = self.images.get(content_hash)
                if entry is None:
                    new_blocks += self.blocks_per_image
                elif entry.ref_count == 0:
                    revived += len(entry.block_ids)
        return new_blocks + revived <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_tokens: int, hits: list[int] = ()) -> int:
        """Take the cached `hits`, then fresh blocks up to `num_tokens` tokens; the blocks that `num_tokens` fills
        are offered to the cache (their K/V is written in the coming step). Returns the tokens the hits hold, whose
        K/V need no computing (the scheduler counts them as computed: this never writes num_computed_tokens)."""
        if not seq.block_table:
            self.stats.queried_tokens += seq.num_tokens
            self.stats.hit_tokens += len(hits) * self.block_size
        for block_id in hits:
            self._acquire(block_id)
            seq.block_table.append(block_id)
        seq.num_registered_blocks += len(hits)
        if not seq.image_entries and seq.multimodal is not None and self.blocks_per_image:
            self._acquire_images(seq)
        while len(seq.block_table) < self.blocks_for(num_tokens):
            seq.block_table.append(self._take_free_block())
        self._register_full_blocks(seq, num_tokens)
        return len(hits) * self.block_size

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's hold on its blocks and images (what its tokens count as computed is the
        scheduler's to reset)."""
        for block_id in reversed(seq.block_table):
            self._release_block(block_id)
        for entry in {e.content_hash: e for e in seq.image_entries}.values():
            entry.ref_count -= 1
            if entry.ref_count == 0 and not entry.encoded:  # never written: nothing to find
                self._forget_image(entry)
            if entry.ref_count == 0:
                for block_id in entry.block_ids:
                    self._release_block(block_id)
        seq.image_entries = []
        seq.block_table = []
        seq.num_registered_blocks = 0

    def _release_block(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            self.free_ids[block_id] = None
            if block.key is None and block.image is None:  # nothing to find in it: reuse it first
                self.free_ids.move_to_end(block_id, last=False)

    def _acquire_images(self, seq: Sequence) -> None:
        """Point the sequence at each of its images' entries: found ones first (so that making room for new
        images cannot evict them), then new, still empty, entries."""
        hashes = _distinct_images(seq)
        found = {h: self.images[h] for h in hashes if h in self.images}
        for entry in found.values():
            if entry.ref_count == 0:
                for block_id in entry.block_ids:
                    self._acquire(block_id)
        new = {h: self._new_image_entry(h) for h in hashes if h not in found}
        entries = found | new
        for entry in entries.values():
            entry.ref_count += 1
        self.stats.queried_images += len(hashes)
        self.stats.hit_images += len(found)
        seq.image_entries = [entries[h] for h in seq.multimodal.content_hashes]

    def _new_image_entry(self, content_hash: str) -> ImageEntry:
        block_ids = [self._take_free_block() for _ in range(self.blocks_per_image)]
        for block_id in block_ids:
            self.blocks[block_id].image = content_hash
        entry = self.images[content_hash] = ImageEntry(content_hash, block_ids)
        return entry

    def _forget_image(self, entry: ImageEntry) -> None:
        """Its blocks no longer hold a findable image (one was reused, or it was never written)."""
        del self.images[entry.content_hash]
        for block_id in entry.block_ids:
            self.blocks[block_id].image = None

    def _acquire(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_ids[block_id]
        block.ref_count += 1

    def _take_free_block(self) -> int:
        block_id, _ = self.free_ids.popitem(last=False)
        block = self.blocks[block_id]
        if block.key is not None:
            del self.cached[block.key]
            block.key = None
        if block.image is not None:
            self._forget_image(self.images[block.image])
        block.ref_count = 1
        return block_id

    def _register_full_blocks(self, seq: Sequence, num_tokens: int) -> None:
        if not self.enable_prefix_caching:
            return
        for index in range(seq.num_registered_blocks, num_tokens // self.block_size):
            key = self._block_key(seq, index)
            block = self.blocks[seq.block_table[index]]
            if block.key is None and key not in self.cached:
                self.cached[key] = block.block_id
                block.key = key
        seq.num_registered_blocks = max(seq.num_registered_blocks, num_tokens // self.block_size)

    def _block_key(self, seq: Sequence, index: int) -> bytes:
        """Key of the sequence's full block `index`: a hash of the previous block's key, this block's tokens and
        the images its tokens and those before may attend to. Computed once per sequence and block."""
        while len(seq.block_hashes) <= index:
            i = len(seq.block_hashes)
            start, end = i * self.block_size, (i + 1) * self.block_size
            previous = seq.block_hashes[-1] if seq.block_hashes else b""
            payload = repr((seq.token_ids_between(start, end), seq.image_keys(end, self.key_every_image)))
            seq.block_hashes.append(hashlib.blake2b(previous + payload.encode(), digest_size=16).digest())
        return seq.block_hashes[index]


def _distinct_images(seq: Sequence) -> list[str]:
    return list(dict.fromkeys(seq.multimodal.content_hashes)) if seq.multimodal is not None else []
