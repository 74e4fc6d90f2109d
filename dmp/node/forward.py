"""A cluster worker's sys.stdout and sys.stderr: what a task prints goes to its client."""

from __future__ import annotations

import io
from collections.abc import Callable


class Forward(io.TextIOBase):
    """sys.stdout/sys.stderr of a cluster worker: whole lines become TaskOutput messages."""

    def __init__(self, output: Callable[[str, str], None], stream: str) -> None:
        self.output = output
        self.stream = stream
        self.buf = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.buf += text
        if "\n" in text:
            head, _, self.buf = self.buf.rpartition("\n")
            self.output(self.stream, head)
        return len(text)

    def flush(self) -> None:
        if self.buf:
            text, self.buf = self.buf, ""
            self.output(self.stream, text)
