"""Logging and progress bars that end up in a rule's log file."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

from .errors import InputError

T = TypeVar("T")

log = logging.getLogger("vprflow")


@contextlib.contextmanager
def log_to(path: str | Path | None) -> Iterator[logging.Logger]:
    """Send logging, stdout, stderr (and so tqdm bars) to ``path`` for the block.

    Used by every workflow script so a rule's ``log:`` file holds its whole story.
    Exceptions are logged with their traceback before they propagate; an InputError (bad input,
    named by its message) is logged and ends the process with its message alone, so the console
    shows what to fix instead of a traceback.
    """
    if path is None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        yield log
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = stream
        try:
            yield log
        except InputError as error:
            log.error("%s", error)
            raise SystemExit(f"Error: {error}") from None
        except BaseException:
            log.exception("failed")
            raise
        finally:
            sys.stdout, sys.stderr = old_out, old_err
            root.removeHandler(handler)


def tell_console(message: str) -> None:
    """Log ``message`` and show it on the terminal the job runs from too (``log_to`` sends
    stderr to the rule's log): for what a user must see without opening a log."""
    log.warning(message)
    if sys.__stderr__ is not None and sys.stderr is not sys.__stderr__:
        print(message, file=sys.__stderr__, flush=True)


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "img") -> Iterable[T]:
    """A tqdm bar that stays readable in a log file (few updates when not a terminal)."""
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        file=sys.stderr,
        mininterval=0.5 if interactive else 10.0,
        dynamic_ncols=interactive,
        ascii=not interactive,
    )
