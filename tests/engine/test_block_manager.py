"""Block manager: block accounting, reference counts and prefix caching. Pure Python, no model."""

from vlmserve.engine.block_manager import BlockManager
from vlmserve.engine.sequence import MultiModalInputs, Sequence
from vlmserve.sampling_params import SamplingParams

IMAGE = 99


def make_seq(tokens: list[int], images: list[str] = ()) -> Sequence:
    multimodal = None
    if images:
        markers = [i for i, t in enumerate(tokens) if t == IMAGE]
        ranges = [(m, markers[k + 1] if k + 1 < len(markers) else len(tokens)) for k, m in enumerate(markers)]
        multimodal = MultiModalInputs(None, None, None, [1] * len(images), ranges, list(images))
    return Sequence(Sequence.next_id(), "r", list(tokens), SamplingParams(), multimodal=multimodal)


def admit(manager: BlockManager, seq: Sequence) -> list[int]:
    """What the scheduler does for a new sequence: take its cached prefix, then blocks for the rest."""
    hits = manager.cached_prefix(seq)
    assert manager.can_allocate(seq, seq.num_tokens, hits)
    seq.num_computed_tokens += manager.allocate(seq, seq.num_tokens, hits)
    return hits


def test_allocates_ceil_blocks_and_frees_them():
    manager = BlockManager(num_blocks=10, block_size=4, enable_prefix_caching=False)
    seq = make_seq(list(range(9)))
    admit(manager, seq)
    assert len(seq.block_table) == 3 and manager.num_free_blocks == 7
    seq.output_token_ids += [1, 2, 3]  # 12 tokens still fit in 3 blocks
    manager.allocate(seq, seq.num_tokens)
    assert len(seq.block_table) == 3
    seq.output_token_ids.append(4)  # the 13th token needs a 4th block
    manager.allocate(seq, seq.num_tokens)
    assert len(seq.block_table) == 4 and manager.num_free_blocks == 6
    manager.free(seq)
    assert manager.num_free_blocks == 10 and seq.block_table == [] and seq.num_computed_tokens == 0


def test_same_prefix_shares_full_blocks_and_keeps_the_last_token_to_compute():
    manager = BlockManager(num_blocks=10, block_size=4)
    first, second = make_seq(list(range(10))), make_seq(list(range(10)) + [50, 51])
    assert admit(manager, first) == []
    hits = admit(manager, second)
    assert hits == first.block_table[:2] and second.num_computed_tokens == 8
    assert manager.blocks[hits[0]].ref_count == 2
    assert manager.stats.queried_tokens == 22 and manager.stats.hit_tokens == 8
    exact = make_seq(list(range(8)))  # fully cached, but its last token must still be computed
    assert admit(manager, exact) == first.block_table[:1] and exact.num_computed_tokens == 4


def test_freed_blocks_stay_findable_until_reused():
    manager = BlockManager(num_blocks=4, block_size=4)
    first = make_seq(list(range(9)))
    admit(manager, first)
    cached = first.block_table[:2]
    manager.free(first)
    assert manager.num_free_blocks == 4
    again = make_seq(list(range(9)))
    assert admit(manager, again) == cached and manager.num_free_blocks == 1
    manager.free(again)
    filler = make_seq([70 + i for i in range(16)])  # takes every block, evicting the cached ones
    admit(manager, filler)
    manager.free(filler)
    assert admit(manager, make_seq(list(range(9)))) == []


def test_blocks_are_keyed_by_the_images_their_tokens_attend_to():
    manager = BlockManager(num_blocks=20, block_size=4)
    tokens = [1, 2, 3, 4, 5, 6, 7, IMAGE, 8, 9, 10, 11, 12]
    red = make_seq(tokens, ["red"])
    admit(manager, red)
    blue = make_seq(tokens, ["blue"])
    # Block 0 (text before the image) is shared; block 1 holds the marker and sees the image: not shared.
    assert admit(manager, blue) == red.block_table[:1]
    assert admit(manager, make_seq(tokens, ["red"])) == red.block_table[:3]


def test_transformers_rule_keys_every_block_by_every_image():
    manager = BlockManager(num_blocks=20, block_size=4, key_every_image=True)
    tokens = [1, 2, 3, 4, 5, 6, 7, IMAGE, 8, 9, 10, 11, 12]
    admit(manager, make_seq(tokens, ["red"]))
    assert admit(manager, make_seq(tokens, ["blue"])) == []


def test_can_allocate_counts_revived_cached_blocks():
    manager = BlockManager(num_blocks=3, block_size=4)
    first = make_seq(list(range(9)))
    admit(manager, first)
    manager.free(first)
    seq = make_seq(list(range(9)))
    hits = manager.cached_prefix(seq)
    assert len(hits) == 2
    assert manager.can_allocate(seq, 9, hits)  # 2 revived + 1 fresh = 3 free blocks
    assert not manager.can_allocate(seq, 13, hits)


def image_seq(images: list[str]) -> Sequence:
    tokens = [1]
    for _ in images:
        tokens += [IMAGE, 5, 6]
    return make_seq(tokens, images)


def test_images_take_blocks_of_the_same_pool_and_are_shared_by_content():
    manager = BlockManager(num_blocks=12, block_size=4, blocks_per_image=3)
    first = image_seq(["cat", "dog"])  # 7 tokens: 2 blocks, plus 2 images x 3 blocks
    admit(manager, first)
    assert manager.num_free_blocks == 12 - 2 - 6
    assert [e.content_hash for e in first.image_entries] == ["cat", "dog"]
    second = image_seq(["dog"])
    assert manager.can_allocate(second, second.num_tokens)
    admit(manager, second)
    assert second.image_entries[0] is first.image_entries[1] and manager.num_free_blocks == 12 - 8 - 1
    assert (manager.stats.queried_images, manager.stats.hit_images) == (3, 1)
    manager.free(first)
    manager.free(second)
    assert manager.num_free_blocks == 12


def test_same_image_twice_in_one_prompt_takes_one_entry():
    manager = BlockManager(num_blocks=12, block_size=4, blocks_per_image=3)
    seq = image_seq(["cat", "cat"])
    admit(manager, seq)
    assert seq.image_entries[0] is seq.image_entries[1] and manager.num_free_blocks == 12 - 2 - 3
    manager.free(seq)
    assert manager.num_free_blocks == 12


def test_released_image_stays_findable_until_its_blocks_are_reused():
    manager = BlockManager(num_blocks=8, block_size=4, blocks_per_image=3, enable_prefix_caching=False)
    first = image_seq(["cat"])
    admit(manager, first)
    first.image_entries[0].encoded = True  # the model runner wrote its K/V
    cat_blocks = first.image_entries[0].block_ids
    manager.free(first)
    again = image_seq(["cat"])
    admit(manager, again)
    assert again.image_entries[0].block_ids == cat_blocks and manager.stats.hit_images == 1
    manager.free(again)
    filler = make_seq(list(range(30)))  # 8 blocks: every block, the image's included
    admit(manager, filler)
    manager.free(filler)
    assert "cat" not in manager.images
    third = image_seq(["cat"])
    admit(manager, third)
    assert not third.image_entries[0].encoded and manager.stats.hit_images == 1


def test_unwritten_image_is_not_findable_after_release():
    manager = BlockManager(num_blocks=8, block_size=4, blocks_per_image=3)
    seq = image_seq(["cat"])
    admit(manager, seq)
    manager.free(seq)  # preempted or aborted before the runner encoded it
    assert "cat" not in manager.images and manager.num_free_blocks == 8


def test_can_allocate_counts_new_and_revived_images():
    manager = BlockManager(num_blocks=6, block_size=4, blocks_per_image=3)
    seq = image_seq(["cat", "dog"])  # needs 2 + 6 blocks
    assert not manager.can_allocate(seq, seq.num_tokens)
    small = image_seq(["cat"])
    assert manager.can_allocate(small, small.num_tokens)


def test_allocate_reports_the_cached_tokens_and_leaves_counting_them_to_the_scheduler():
    manager = BlockManager(num_blocks=10, block_size=4)
    first, second = make_seq(list(range(10))), make_seq(list(range(10)) + [50])
    admit(manager, first)
    hits = manager.cached_prefix(second)
    assert manager.allocate(second, second.num_tokens, hits) == 8 and second.num_computed_tokens == 0
    assert manager.allocate(second, second.num_tokens) == 0
    second.num_computed_tokens = 11
    manager.free(second)
    assert second.block_table == [] and second.num_computed_tokens == 11
