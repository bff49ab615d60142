"""Synthetic benchmark prompts: random token ids with random-pixel images sized to tile into a chosen number of
tiles, every prompt drawn from its own seed so that no two share a prefix-cache block or an image; and chat
requests of random words and lengths, some with a random-pixel image of random size."""

import numpy as np
from PIL import Image

from vlmserve.multimodal.mllama_processor import supported_aspect_ratios

FIRST_TOKEN_ID, END_TOKEN_ID = 1_000, 100_000  # ordinary BPE tokens, far below the special ids (128000+)
CHAT_DATE = "26 Jul 2024"  # fixed, so that the text-only system block (and so prompt lengths) never change
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards", "quietly",
         "study", "ancient", "maps", "of", "distant", "mountains", "rivers", "cities", "and", "forests", "describe",
         "summarize", "explain", "compare", "picture", "color", "light", "shadow", "window", "garden", "ocean",
         "engine", "server", "token", "image", "model", "answer", "question", "because", "although", "however",
         "therefore", "yesterday", "tomorrow", "morning", "evening", "number", "table", "chair", "music")


def image_with_tiles(num_tiles: int, tile_size: int, max_tiles: int, seed: int) -> Image.Image:
    """Random pixels on exactly a (high x wide) tile canvas with high * wide == num_tiles, as square as can be."""
    grids = [(high, wide) for high, wide in supported_aspect_ratios(max_tiles) if high * wide == num_tiles]
    if not grids:
        raise ValueError(f"--image-tiles {num_tiles}: this model tiles an image into 1 to {max_tiles} tiles")
    high, wide = min(grids, key=lambda grid: abs(grid[0] - grid[1]))
    pixels = np.random.default_rng(seed).integers(0, 256, (high * tile_size, wide * tile_size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def synthetic_prompt(seed: int, prompt_len: int, image_tiles: int, model_config) -> dict:
    """An LLM.generate prompt of `prompt_len` token ids: with image_tiles > 0, `<|image|>`, BOS, random tokens and
    one image of that many tiles; else BOS and random tokens."""
    bos, image_token = model_config.text.bos_token_id, model_config.image_token_index
    head = [image_token, bos] if image_tiles else [bos]
    if prompt_len <= len(head):
        raise ValueError(f"a prompt needs more than {len(head)} tokens ({'<|image|>, ' if image_tiles else ''}"
                         f"BOS and text), got {prompt_len}")
    rng = np.random.default_rng(seed)
    ids = head + rng.integers(FIRST_TOKEN_ID, END_TOKEN_ID, prompt_len - len(head)).tolist()
    vision = model_config.vision
    images = [image_with_tiles(image_tiles, vision.image_size, vision.max_num_tiles, seed)] if image_tiles else []
    return {"prompt_token_ids": ids, "images": images}


def synthetic_chats(num_prompts: int, seed: int) -> list[list[dict]]:
    """One-message conversations of 2 to 259 random words; every third one (the second, fifth, ...) opens with one
    random-pixel image of 24 to 399 pixels a side. All are drawn in order from one seed."""
    rng = np.random.default_rng(seed)
    conversations = []
    for i in range(num_prompts):
        text = " ".join(rng.choice(WORDS, int(rng.integers(2, 260)))).capitalize() + "?"
        content = [{"type": "text", "text": text}]
        if i % 3 == 1:
            height, width = (int(side) for side in rng.integers(24, 400, 2))
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            content.insert(0, {"type": "image", "image": Image.fromarray(pixels)})
        conversations.append([{"role": "user", "content": content}])
    return conversations
