"""Logging for the commands: concise INFO lines on the console (kept clear of progress bars), DEBUG to a file."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record))


def setup_console_log(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if any(isinstance(h, _TqdmHandler) for h in root.handlers):
        return
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("[dynsparse] %(message)s"))
    handler.setLevel(level)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "transformers", "fsspec", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # offline retries are reported by our error


def set_console_level(level: int) -> None:
    """Show only records at `level` and above on the console (e.g. WARNING on the other ranks of a torchrun)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _TqdmHandler):
            handler.setLevel(level)


@contextmanager
def file_log(path: Path) -> Iterator[None]:
    """Also log everything (DEBUG) to `path`, e.g. OUTPUT_DIR/train.log, until the block ends (so a second run in
    the same process does not write into the first run's log)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
