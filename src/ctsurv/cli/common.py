"""What every ``ctsurv`` command shares: the consoles, and turning the errors a user can fix into one line.

Errors the user can fix (:class:`ctsurv.errors.CtsurvError`, and a file that cannot be read or written) end the
command with a one-line reason on stderr and exit status 2, without a traceback.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from ctsurv.errors import CtsurvError

console = Console()
err_console = Console(stderr=True)


# errno -> (what failed, what to do) for a file or folder the command cannot read or write
_FILE_ERRORS = {
    errno.EACCES: ("permission denied", "choose a path you may read and write"),
    errno.EPERM: ("operation not permitted", "choose a path you may read and write"),
    errno.EROFS: ("read-only file system", "choose a writable location"),
    errno.ENOSPC: ("no space left on the device", "free some space or choose another location"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose another location"),
    errno.EISDIR: ("it is a folder", "pass a file path"),
    errno.ENOTDIR: ("a part of the path is not a folder", "check the path"),
    errno.EEXIST: ("a file is in the way of a folder", "check the path"),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path"),
}


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a CtsurvError, or an OSError on a file (permission, space, a folder for a file...), into a one-line
    message and exit status 2. Other exceptions are bugs and keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CtsurvError as e:
            fail("; ".join([str(e), *getattr(e, "__notes__", ())]))
        except OSError as e:
            if e.errno not in _FILE_ERRORS or e.filename is None:
                raise
            reason, hint = _FILE_ERRORS[e.errno]
            fail("; ".join([f"cannot read or write {e.filename}: {reason}", hint, *getattr(e, "__notes__", ())]))
        except KeyboardInterrupt as e:  # click prints "Aborted!" only: say where a kept partial run is
            for note in getattr(e, "__notes__", ()):
                err_console.print(escape(note), soft_wrap=True, highlight=False)
            raise

    return wrapper


def fail(message: str) -> NoReturn:
    """Print ``message`` as one ``error:`` line on stderr and exit with status 2."""
    line = " ".join(part.strip() for part in message.splitlines())
    err_console.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=2) from None
