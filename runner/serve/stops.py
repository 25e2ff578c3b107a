"""Stop strings applied to the decoded text as it streams. The engine works in tokens and a stop
string may end inside a token or span several, so the check runs on text: whatever could still
become the start of a stop string is held back until the next piece decides it."""
from __future__ import annotations


class StopScanner:
    def __init__(self, stops: tuple[str, ...] | list[str]):
        self.stops = tuple(s for s in stops if s)
        self.held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The part of `text` (after what was held) that is safe to emit. After a stop string is
        found, `stopped` is set and everything from it on is dropped."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        pending = self.held + text
        first = min((i for i in (pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if first >= 0:
            self.held, self.stopped = "", True
            return pending[:first]
        keep = self._partial_suffix(pending)
        self.held = pending[len(pending) - keep:] if keep else ""
        return pending[:len(pending) - keep]

    def flush(self) -> str:
        """At the end of generation: what was held back never became a stop string."""
        text, self.held = ("" if self.stopped else self.held), ""
        return text

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest end of `text` that is a proper beginning of a stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest


class IncrementalDecoder:
    """Token ids to new text, piece by piece. The whole answer is decoded each time (a token may
    change how its neighbours decode, and a multi-byte character may span tokens); text is only
    emitted once it is stable, so the pieces joined equal the whole answer decoded at once."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.sent = ""

    def add(self, token_ids: list[int], final: bool = False) -> str:
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        if not final and (text.endswith("\ufffd") or not text.startswith(self.sent)):
            return ""  # an unfinished character, or an earlier piece re-decoded differently: wait
        if not text.startswith(self.sent):  # final and unstable: emit what differs from here on
            return ""
        piece, self.sent = text[len(self.sent):], text
        return piece
