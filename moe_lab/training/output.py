"""Where Lightning's own console output goes: a quiet run (a sweep trial) keeps it in its run
directory's train.log instead of the console."""

from __future__ import annotations

import contextlib
from pathlib import Path

LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


def lightning_info_silenced() -> None:
    """A console run (`train`) prints moe_lab's own lines only: Lightning's info lines (device summary,
    its tips, "`Trainer.fit` stopped", the validation batch count) say nothing the run summary does not;
    its warnings still show, and the known-harmless ones are filtered by their exact message."""
    import logging

    from moe_lab.cli import filter_known_harmless_warnings

    filter_known_harmless_warnings()
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def lightning_output_to(path: Path):
    """Lightning's console lines (device summary, its tips, "`Trainer.fit` stopped") and the warnings raised
    meanwhile go to the file `path` (appended) instead of the console: a sweep trains many runs, each with
    its log."""
    import logging

    handler = logging.FileHandler(path, encoding="utf-8")
    try:
        with _lightning_output_to_handler(handler):
            yield
    finally:
        handler.close()


@contextlib.contextmanager
def lightning_output_captured():
    """As lightning_output_to, into a string buffer (yielded): for what Lightning prints before the run
    directory that will hold its log may be created."""
    import io
    import logging

    buffer = io.StringIO()
    with _lightning_output_to_handler(logging.StreamHandler(buffer)):
        yield buffer


@contextlib.contextmanager
def _lightning_output_to_handler(handler):
    import logging
    import warnings

    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    saved = [(lg.handlers[:], lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [handler], False
    with warnings.catch_warnings():  # restores showwarning on exit
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: handler.stream.write(
            warnings.formatwarning(message, category, filename, lineno, line)
        )
        try:
            yield
        finally:
            for lg, (handlers, propagate) in zip(loggers, saved, strict=True):
                lg.handlers, lg.propagate = handlers, propagate
