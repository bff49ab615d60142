"""What the engine hands back for a request: vLLM's RequestOutput/CompletionOutput shape."""

from dataclasses import dataclass, field, replace


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop", "length", "abort" or "error" once finished
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it
    # per token: token id -> logprob of the top-k, best first, then the sampled token if it is not among them
    logprobs: list[dict[int, float]] | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = False
    num_images: int = 0
    num_image_tiles: int = 0  # the tiles the images were cut into (one each for detail "low")
    error: str | None = None  # set when the engine failed this request (finish_reason "error"); others go on


class OutputCollector:
    """Joins one request's deltas into its whole output, for callers that do not stream."""

    def __init__(self):
        self.last: RequestOutput | None = None
        self._text: dict[int, list[str]] = {}
        self._choices: dict[int, CompletionOutput] = {}

    def add(self, delta: RequestOutput) -> None:
        self.last = delta
        for c in delta.outputs:
            if c.index not in self._choices:
                self._choices[c.index] = CompletionOutput(c.index, "", [], logprobs=None if c.logprobs is None else [])
                self._text[c.index] = []
            choice = self._choices[c.index]
            self._text[c.index].append(c.text)
            choice.token_ids += c.token_ids
            if c.logprobs is not None:
                choice.logprobs += c.logprobs
            choice.finish_reason, choice.stop_reason = c.finish_reason, c.stop_reason

    def completions(self) -> list[CompletionOutput]:
        """Each completion so far, whole, by index."""
        for index, pieces in self._text.items():
            self._choices[index].text = "".join(pieces)
            self._text[index] = [self._choices[index].text]
        return [self._choices[i] for i in sorted(self._choices)]

    def result(self) -> RequestOutput:
        """The whole output: the last delta's request fields with every completion joined."""
        return replace(self.last, outputs=self.completions())
