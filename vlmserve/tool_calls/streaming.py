"""Tool calls in a stream: content is sent as it comes, up to where a call might open; from a call's opening on,
text is held and parsed once the completion ends.

What is sent is always the start of the content `parse_tool_calls` finds in the whole text, so the joined stream
equals the answer a non-streamed request gets: text is sent only before the first place where a call could still
open (`CallOpenings`: `[` name `(`, `[{"name"`, `{"name"`, `{"type"`, a wrapper token, or the start of one of
these at the end of the text so far), and whitespace only once text follows it (content is stripped). Prose whose
brackets cannot open a call (`[1]`, `{"x"`) streams on.
"""

import re
from collections.abc import Collection

from vlmserve.tool_calls.parser import CallOpenings, Opening, parse_tool_calls
from vlmserve.tool_calls.types import ParsedOutput

_CANDIDATE = re.compile(r"[\[{<]")


class ToolCallStreamer:
    """One completion's text, fed as it is generated: `feed` each piece, then `finish` once."""

    def __init__(self, tool_names: Collection[str]):
        self.tool_names = tuple(tool_names)
        self._openings = CallOpenings(tool_names)
        self._pieces: list[str] = []  # the whole text, for finish()
        self._unsettled = ""  # the text from the first place a call may still open (nothing sent from there on)
        self._holding = False  # a call's opening was seen: everything from it waits for finish()
        self._space = ""  # whitespace after the content sent, sent once more content follows it
        self._num_sent = 0  # characters of content sent

    def feed(self, delta: str) -> str:
        """The content that may be sent now that `delta`, the completion's next text, has come ("" if none)."""
        self._pieces.append(delta)
        if self._holding:
            return ""
        self._unsettled += delta
        settled = self._settled_end()
        released, self._unsettled = self._unsettled[:settled], self._unsettled[settled:]
        return self._send(released)

    def finish(self) -> ParsedOutput:
        """Once the completion has ended: the content not sent yet (None if none) and every call."""
        parsed = parse_tool_calls("".join(self._pieces), self.tool_names)
        rest = (parsed.content or "")[self._num_sent:]
        return ParsedOutput(rest or None, parsed.calls)

    def _settled_end(self) -> int:
        """Where the unsettled text stops being sure to be content: at its first place where a call opens (from
        then on held) or may still open, else at its end."""
        text, start = self._unsettled, 0
        while (candidate := _CANDIDATE.search(text, start)) is not None:
            start = candidate.start()
            opening = self._openings.at(text, start)
            if opening is not Opening.NO:
                self._holding = opening is Opening.YES
                return start
            start += 1
        return len(text)

    def _send(self, released: str) -> str:
        """`released` (content for sure) as it may be sent: no leading whitespace, trailing whitespace kept back."""
        text = self._space + released if self._num_sent else released.lstrip()
        sent = text.rstrip()
        self._space = text[len(sent):]
        self._num_sent += len(sent)
        return sent
