"""Sampled tokens -> what a request's consumer is sent: text, stop strings, finish reasons, logprobs.

Each step's output carries only what is new (a delta per completion that advanced); nothing keeps or copies a
request's history except the detokenizer's short window. A completion with stop strings holds back the last
characters that a stop string could still begin in (one less than the longest), so text once sent is never cut.
"""

from dataclasses import dataclass

from vlmserve.engine.input_processor import PreparedInput
from vlmserve.engine.outputs import CompletionOutput, RequestOutput
from vlmserve.sampling_params import SamplingParams
from vlmserve.tokenizer.detokenizer import IncrementalDetokenizer
from vlmserve.tokenizer.tokenizer import Tokenizer


@dataclass
class _CompletionState:
    index: int
    params: SamplingParams
    stop_token_ids: tuple[int, ...]
    detokenizer: IncrementalDetokenizer
    holdback: int  # characters kept unsent while a stop string may still begin in them
    unsent: str = ""
    num_tokens: int = 0
    finished: bool = False
    delta: CompletionOutput | None = None  # what this step added, until step_outputs() hands it out

    def pending(self) -> CompletionOutput:
        if self.delta is None:
            logprobs = [] if self.params.logprobs is not None else None
            self.delta = CompletionOutput(self.index, "", [], logprobs=logprobs)
        return self.delta

    def finish(self, reason: str, stop_reason: int | str | None = None, text: str = "") -> None:
        delta = self.pending()
        delta.text += text
        delta.finish_reason, delta.stop_reason = reason, stop_reason
        self.unsent, self.finished = "", True


@dataclass
class _RequestState:
    request_id: str
    prepared: PreparedInput
    completions: list[_CompletionState]
    error: str | None = None

    @property
    def finished(self) -> bool:
        return all(c.finished for c in self.completions)

    def output(self) -> RequestOutput:
        deltas = [c.delta for c in self.completions if c.delta is not None]
        for c in self.completions:
            c.delta = None
        p = self.prepared
        return RequestOutput(self.request_id, p.prompt, p.prompt_token_ids, deltas, finished=self.finished,
                             num_images=p.num_images, num_image_tiles=p.num_image_tiles, error=self.error)


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, max_model_len: int):
        self.tokenizer, self.max_model_len = tokenizer, max_model_len
        self._requests: dict[str, _RequestState] = {}
        self._touched: dict[str, _RequestState] = {}  # advanced this step, in the order they were

    def add(self, request_id: str, prepared: PreparedInput, params: SamplingParams,
            stop_token_ids: tuple[int, ...]) -> None:
        """Track a request's n completions; `stop_token_ids`: the tokens that end them (EOS unless ignore_eos)."""
        holdback = max(map(len, params.stop), default=1) - 1
        completions = [
            _CompletionState(index, params, stop_token_ids, holdback=holdback, detokenizer=IncrementalDetokenizer(
                self.tokenizer, prepared.prompt_token_ids, skip_special_tokens=params.skip_special_tokens))
            for index in range(params.n)]
        self._requests[request_id] = _RequestState(request_id, prepared, completions)

    def __len__(self) -> int:
        return len(self._requests)

    def append(self, request_id: str, index: int, token_id: int, logprobs: dict[int, float] | None,
               num_tokens: int, grammar_done: bool = False) -> bool:
        """Add completion `index`'s newly sampled token; True when it ends the completion. `num_tokens`: the
        sequence's length with it (prompt included); `grammar_done`: its output grammar has terminated."""
        request = self._touched[request_id] = self._requests[request_id]
        c = request.completions[index]
        c.num_tokens += 1
        delta = c.pending()
        delta.token_ids.append(token_id)
        if logprobs is not None and delta.logprobs is not None:
            delta.logprobs.append(logprobs)
        text = c.unsent + c.detokenizer.step([token_id])
        params, past_min = c.params, c.num_tokens >= c.params.min_tokens
        if token_id in c.stop_token_ids and past_min:
            c.finish("stop", token_id if token_id in params.stop_token_ids else None, text + c.detokenizer.flush())
        elif grammar_done:
            c.finish("stop", None, text + c.detokenizer.flush())
        elif params.stop and past_min and (hit := _earliest_stop(text, len(c.unsent), params.stop)):
            position, stop = hit
            c.finish("stop", stop, text[:position + len(stop) if params.include_stop_str_in_output else position])
        elif c.num_tokens >= params.max_tokens or num_tokens >= self.max_model_len:
            c.finish("length", None, text + c.detokenizer.flush())
        else:
            sent = len(text) - c.holdback
            delta.text += text[:max(sent, 0)]
            c.unsent = text[max(sent, 0):]
        return c.finished

    def fail(self, request_id: str, error: str) -> bool:
        """End the request's unfinished completions with finish_reason "error" (held-back text is sent). False,
        changing nothing, when the request has failed already."""
        request = self._requests[request_id]
        if request.error is not None:
            return False
        request.error = error
        self._touched[request_id] = request
        self._end(request, "error")
        return True

    def abort(self, request_id: str) -> RequestOutput | None:
        """Drop a request: its last output (held-back text, finish_reason "abort"), or None if unknown."""
        request = self._requests.pop(request_id, None)
        self._touched.pop(request_id, None)
        if request is None:
            return None
        self._end(request, "abort")
        return request.output()

    def step_outputs(self) -> list[RequestOutput]:
        """The outputs of the requests this step advanced, in the order they were first touched; finished ones
        are dropped."""
        outputs = [request.output() for request in self._touched.values()]
        for output in outputs:
            if output.finished:
                del self._requests[output.request_id]
        self._touched.clear()
        return outputs

    @staticmethod
    def _end(request: _RequestState, reason: str) -> None:
        for c in request.completions:
            if not c.finished:
                c.finish(reason, None, c.unsent)


def _earliest_stop(text: str, num_checked: int, stops: list[str]) -> tuple[int, str] | None:
    """(position, stop string) of the earliest stop string in `text` that ends past its first `num_checked`
    characters (those were searched already), or None."""
    hits = []
    for stop in stops:
        position = text.find(stop, max(0, num_checked - len(stop) + 1))
        if position >= 0:
            hits.append((position, stop))
    return min(hits, default=None)
