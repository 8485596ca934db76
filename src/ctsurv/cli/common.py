"""What every ``ctsurv`` command shares: the consoles, and turning the errors a user can fix into one line.

Errors the user can fix (:class:`ctsurv.errors.CtsurvError`, and a file that cannot be read or written) end the
command with a one-line reason on stderr and exit status 2, without a traceback.
"""

from __future__ import annotations

import errno
import functools
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
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


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity mask (``taskset``, SLURM's ``--cpus-per-task``), capped by a
    cgroup CPU quota (``docker --cpus``, Kubernetes limits), which torch does not read by itself."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = None
    try:
        limit, period = (cgroup / "cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000" or "200000 100000"
        quota = None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        try:  # cgroup v1
            limit = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
            quota = None if limit <= 0 else limit / int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            pass
    return max(1, min(n, math.ceil(quota) if quota else n))


def pin_threads(threads: int | None) -> int | None:
    """Set the intra-op threads of torch (and OpenMP / MKL) before torch is imported; returns the count set.

    ``threads`` (``--threads``, ``CTSURV_THREADS``) wins. Otherwise an ``OMP_NUM_THREADS`` the user set stays,
    and where the process may use fewer CPUs than the machine has (:func:`usable_cpus`) the count is cut to
    those: more threads than CPUs make every OpenMP barrier wait for a descheduled thread, which slows the
    small models of the demo several times over. Worker processes inherit the setting.
    """
    if threads is not None and threads < 1:
        raise CtsurvError(f"--threads must be at least 1, got {threads}")
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return None
        usable = usable_cpus()
        if usable >= (os.cpu_count() or 1):
            return None  # torch's own default (the physical cores) is right
        threads = usable
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    if "torch" in sys.modules:  # already imported (tests, or python -m with an import before): set it directly
        sys.modules["torch"].set_num_threads(threads)
    return threads
