"""A stand-in for the Llama 4 tokenizer, for tests and tiny demo checkpoints.

The real Llama 4 vocabulary (a 200 000-token byte-level BPE plus 2 048 special tokens) cannot be downloaded here,
so this builds a tokenizer with the same shape: byte-level BPE over all 256 bytes and a few dozen merges,
unused filler tokens up to id 199 999, every id 200 000..202 047 a special token at its real place (Meta's list,
model_spec G.5), and a post-processor that prepends `<|begin_of_text|>` as the real one does. Its ordinary token
ids mean nothing outside this file; real checkpoints ship their own tokenizer.json, which vlmserve reads instead.
"""

import itertools
import json
import os
import string
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from vlmserve.tokenizer.tokenizer import LLAMA4_SPECIAL_TOKENS, TOKENIZER_FILE

FIRST_SPECIAL_ID = 200_000
VOCAB_SIZE = 202_048
# Llama 4's pre-tokenizer split (o200k-style), as in Meta's and HF's converters.
SPLIT_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Words that get a single token each, in byte-level spelling (Ġ is a space, Ċ a newline).
MERGED_WORDS = (
    "ĊĊ", "user", "assistant", "system", "Ġthe", "Ġa", "Ġis", "Ġof", "Ġand", "Ġto", "Ġin", "Ġthis", "Ġimage",
    "Ġwhat", "What", "Describe", "Hello", "Ġyou", "Ġcat", "Ġdog", "Ġpicture", "Ġcolor", "Ġred", "Ġblue",
)


def llama4_special_tokens() -> list[str]:
    """The 2 048 special tokens in id order from 200 000 (Meta's Llama 4 list, then reserved fillers)."""
    text = ["<|begin_of_text|>", "<|end_of_text|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
            "<|header_start|>", "<|header_end|>", "<|eom|>", "<|eot|>", "<|step|>",
            *_reserved("text_post_train", range(6)), "<|python_start|>", "<|python_end|>",
            "<|finetune_right_pad|>", *_reserved("text_post_train", range(6, 67))]
    vision = ["<|image_start|>", "<|image_end|>", *_reserved("vision", range(2)), "<|tile_x_separator|>",
              "<|tile_y_separator|>", *_reserved("vision", range(2, 6)), "<|image|>", *_reserved("vision", [6]),
              "<|patch|>", *_reserved("vision", range(7, 1048))]
    reasoning = [*_reserved("reasoning", range(8)), "<|reasoning_thinking_start|>", "<|reasoning_thinking_end|>"]
    named = text + vision + reasoning
    fillers = [f"<|reserved_special_token_{i}|>" for i in range(VOCAB_SIZE - FIRST_SPECIAL_ID - len(named))]
    return named + fillers


def build_llama4_standin_tokenizer() -> Tokenizer:
    """A byte-level BPE `tokenizers.Tokenizer` with Llama 4's vocabulary size and special-token ids."""
    vocab, merges = _base_vocab_and_merges()
    vocab.update(zip(_fillers(set(vocab), FIRST_SPECIAL_ID - len(vocab)), itertools.count(len(vocab))))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                  for token in llama4_special_tokens()])
    bos = LLAMA4_SPECIAL_TOKENS.bos
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                      special_tokens=[(bos, FIRST_SPECIAL_ID)]),
    ])
    return tokenizer


def write_llama4_standin_tokenizer(model_dir: str | os.PathLike) -> Path:
    """Write the stand-in's tokenizer.json (and a tokenizer_config.json for transformers) into `model_dir`."""
    model_dir = Path(model_dir)
    path = model_dir / TOKENIZER_FILE
    build_llama4_standin_tokenizer().save(str(path), pretty=False)
    special = LLAMA4_SPECIAL_TOKENS
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": special.bos, "eos_token": special.eos,
              "pad_token": special.pad, "model_max_length": 10485760, "padding_side": "left"}
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path


def _reserved(name: str, indices) -> list[str]:
    return [f"<|{name}_reserved_special_token_{i}|>" for i in indices]


def _byte_alphabet() -> list[str]:
    """The byte-level alphabet: byte b is spelled by entry b (GPT-2's bytes_to_unicode)."""
    printable = {*range(33, 127), *range(161, 173), *range(174, 256)}
    unprintable = iter(range(256, 512))
    return [chr(byte) if byte in printable else chr(next(unprintable)) for byte in range(256)]


def _base_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = {symbol: token_id for token_id, symbol in enumerate(_byte_alphabet())}
    merges = []
    for word in MERGED_WORDS:
        for end in range(2, len(word) + 1):  # left to right: "us" + "e" -> "use", "use" + "r" -> "user"
            if word[:end] not in vocab:
                merges.append((word[:end - 1], word[end - 1]))
                vocab[word[:end]] = len(vocab)
    return vocab, merges


def _fillers(taken: set[str], count: int) -> list[str]:
    """`count` unused lowercase tokens; no merge makes them, so encoding never produces them."""
    candidates = ("".join(letters) for length in itertools.count(2)
                  for letters in itertools.product(string.ascii_lowercase, repeat=length))
    return list(itertools.islice((token for token in candidates if token not in taken), count))
