"""Console output for runs: quiet, normal and verbose modes; plain lines when not a terminal."""

from __future__ import annotations

import sys
from typing import Literal, TextIO

Mode = Literal["quiet", "normal", "verbose"]


class Console:
    """Prints run progress.

    - ``quiet``: only results (test metrics, where the run folder is) and warnings.
    - ``normal``: findings, split, a compact table row per epoch; a live progress bar per epoch
      (loss, throughput, ETA) when the output is a terminal.
    - ``verbose``: also a plain line every ``log_every_n_steps`` steps.

    When the stream is not a terminal (CI logs, files) no control characters are written: no
    progress bar, only whole lines.
    """

    def __init__(self, mode: Mode = "normal", stream: TextIO | None = None) -> None:
        self.mode = mode
        self.stream = stream if stream is not None else sys.stdout
        self._columns: list[str] | None = None

    @property
    def interactive(self) -> bool:
        return self.mode != "quiet" and bool(getattr(self.stream, "isatty", lambda: False)())

    def _write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __call__(self, text: str) -> None:
        """An informational line (hidden in quiet mode)."""
        if self.mode != "quiet":
            self._write(text)

    def detail(self, text: str) -> None:
        """A line for verbose mode only."""
        if self.mode == "verbose":
            self._write(text)

    def result(self, text: str) -> None:
        """A line shown in every mode."""
        self._write(text)

    def epoch_table(self, row: dict[str, float], seconds: float, best: bool) -> None:
        """One row of the per-epoch table (the header is printed before the first row)."""
        if self.mode == "quiet":
            return
        keys = [k for k in row if k.startswith(("train.loss", "val."))]
        if self._columns != keys:
            self._columns = keys
            header = ["epoch"] + keys + ["time", "samples/s"]
            self._widths = [max(len(h), 7) for h in header]
            self._write("  ".join(h.rjust(w) for h, w in zip(header, self._widths, strict=True)))
        cells = [f"{int(row['epoch'])}"] + [f"{row[k]:.4f}" for k in keys]
        cells += [f"{seconds:.1f}s", f"{row.get('train.samples_per_s', 0):.0f}"]
        line = "  ".join(c.rjust(w) for c, w in zip(cells, self._widths, strict=True))
        self._write(line + ("  *" if best else ""))
