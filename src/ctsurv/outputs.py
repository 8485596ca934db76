"""Outputs that appear whole or not at all.

A command writes into a hidden staging folder beside its ``--out`` (``.NAME.partial-PID``, on the same file
system) and renames it to ``--out`` when it succeeds; an error removes the staging folder, so a failed or
killed command never leaves a half-written ``--out`` (a ``kill -9`` leaves at most the hidden staging folder).
Single files go the same way through a hidden temporary file in their folder. Before anything is written, an
output that is one of the command's inputs, or a folder holding one, is refused, and so is a non-empty folder.

A resumable command (``ctsurv pretrain``) stages in a fixed ``.NAME.partial`` that an error keeps when it
holds anything, so that ``--resume`` continues there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from ctsurv.errors import CtsurvError


def check_inputs(out: Path, inputs: Sequence[Path | None], option: str = "--out") -> None:
    """Refuse an output ``out`` that is one of ``inputs`` or a folder holding one (symlinks resolved).

    An input folder holding ``out`` is fine (a run beside its cohort); None inputs are skipped.
    """
    target = Path(out).resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if source == target:
            raise CtsurvError(f"{option} {out} is the input {given}; write the output elsewhere, not over the input")
        if target in source.parents:
            raise CtsurvError(f"{option} {out} holds the input {given}; choose a new {option} outside it")


@contextlib.contextmanager
def staged_output(
    out: Path, inputs: Sequence[Path | None] = (), *, resumable: bool = False, resume: bool = False
) -> Iterator[Path]:
    """Yield a fresh staging folder beside the output folder ``out``, renamed to ``out`` on success.

    Refuses (CtsurvError, before anything is written) an ``out`` that is or holds one of ``inputs``, or that
    exists and is not an empty folder. On an exception the staging folder is removed and the exception re-raised.

    ``resumable``: stage in ``.NAME.partial``, which an exception keeps when it holds anything (noted on the
    exception). ``resume``: continue in that folder if it exists, or in ``out`` itself (yielded, no renaming)
    if ``out`` is a non-empty folder. Without ``resume``, an existing ``.NAME.partial`` is refused.
    """
    out = Path(out)
    check_inputs(out, inputs)
    if out.exists() and not out.is_dir():
        raise CtsurvError(f"{out} exists and is not a folder; choose a new --out folder")
    filled = out.is_dir() and any(out.iterdir())
    place = Path(os.path.abspath(out))
    if resumable:
        staging = place.with_name(f".{place.name}.partial")
        if filled and resume:
            if staging.exists():
                raise CtsurvError(f"both {out} and the interrupted run {staging} exist; --resume continues one of "
                                  "them: remove the other")
            yield out
            return
        if staging.exists() and not resume:
            raise CtsurvError(f"{staging} holds an interrupted run for {out}; pass --resume to continue it, "
                              "or delete it to start over")
    else:
        staging = place.with_name(f".{place.name}.partial-{os.getpid()}")
        if staging.exists():  # left by a killed process that had this process id
            shutil.rmtree(staging)
    if filled:
        raise CtsurvError(f"{out} already exists and is not empty; choose a new --out folder"
                          + (" or pass --resume" if resumable else ""))
    staging.mkdir(parents=True, exist_ok=resumable)
    try:
        yield staging
    except BaseException as e:
        if resumable and any(staging.iterdir()):
            e.add_note(f"partial run kept in {staging}; rerun with --resume to continue")
        else:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        if out.is_dir():
            out.rmdir()  # empty when checked above; a folder filled since then is not replaced
        os.replace(staging, out)
    except OSError as e:
        raise CtsurvError(f"the outputs are complete in {staging} but could not be moved to {out}: "
                          f"{e.strerror or e}") from None


def check_output_file(out: Path, inputs: Sequence[Path | None] = (), option: str = "--out") -> None:
    """Refuse (CtsurvError) an output file ``out`` that is a folder or one of ``inputs``."""
    if Path(out).is_dir():
        raise CtsurvError(f"{option} {out} is a folder; pass the path of the file to write")
    check_inputs(out, inputs, option)


@contextlib.contextmanager
def staged_file(out: Path, inputs: Sequence[Path | None] = (), option: str = "--out") -> Iterator[Path]:
    """Yield a temporary path beside the output file ``out``; on success it replaces ``out`` atomically.

    Refuses (CtsurvError) an ``out`` that is a folder or one of ``inputs``. The temporary file is removed
    on an exception; an existing ``out`` is replaced only on success. ``option`` names ``out`` in messages.
    """
    out = Path(out)
    check_output_file(out, inputs, option)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
