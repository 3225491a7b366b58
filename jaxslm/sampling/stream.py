"""Turning a growing list of token ids into printable text, piece by piece.

    stream = TextStream(tok, stops=["\\nQuestion:"])
    generate(..., on_tokens=lambda row, ids: print(stream.push(ids), end="", flush=True))
    print(stream.finish())

Text is released only when it is final: an incomplete UTF-8 character (a
byte-level token split it) waits for its other bytes, and a tail that could
still grow into a stop string waits until it cannot. A stop string and what
follows it are never released, so the stream shows exactly the final text.
"""

from __future__ import annotations

from collections.abc import Sequence


class TextStream:
  def __init__(self, tokenizer, stops: Sequence[str] = (), skip_ids: Sequence[int] = ()):
    self.tokenizer, self.stops = tokenizer, [s for s in stops if s]
    self.skip = set(skip_ids)         # e.g. EOS: never shown
    self.ids: list[int] = []
    self.released = 0                 # characters of the text already returned
    self.stopped = False

  def _text(self) -> str:
    return self.tokenizer.decode([i for i in self.ids if i not in self.skip])

  def push(self, ids: Sequence[int]) -> str:
    """The newly final text after appending `ids`."""
    if self.stopped:
      return ""
    self.ids.extend(int(i) for i in ids)
    text = self._text()
    hits = [text.find(s) for s in self.stops if s in text]
    if hits:
      self.stopped = True
      end = min(hits)
    else:
      end = len(text)
      while end > self.released and text[end - 1] == "\ufffd":   # bytes still to come
        end -= 1
      for s in self.stops:   # hold back a tail that is the start of a stop string
        for k in range(min(len(s) - 1, end - self.released), 0, -1):
          if text[:end].endswith(s[:k]):
            end -= k
            break
    out, self.released = text[self.released:end], max(self.released, end)
    return out

  def finish(self) -> str:
    """What is left once generation ended (a held-back tail that never became a stop)."""
    if self.stopped:
      return ""
    text = self._text()
    out, self.released = text[self.released:], len(text)
    return out
