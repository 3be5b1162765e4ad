"""Opening the files a model or SAE comes with, safely: only regular files
are opened (a FIFO blocks the reader, a device never ends), what is read is
bounded, JSON is parsed with limits, and names read from files stay inside
their folder. Every failure is the caller's TinymechError subclass, naming
the file."""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import InvalidInputError, ModelLoadError
from ..text import printable

# The largest tokenizer.json files (262k-token vocabularies) are ~35 MB.
MAX_JSON_BYTES = 128 << 20
# A uint64 has 20 digits; longer integers are never sizes, and Python refuses
# to convert those of more than 4300 digits with a ValueError.
MAX_INT_DIGITS = 32


def folder_to_write(out, name: str = "out", required: str | None = None, error=InvalidInputError) -> Path | None:
    """out as the path of a folder to write, refused (error, naming the argument `name`) before any
    work where it cannot be one: not a path, "" (the current folder), a file or a path inside one, a
    name the system cannot look up. None for None, unless `required` (what the folder is for) says
    it must be given."""
    if out is None and required is None:
        return None
    if not isinstance(out, (str, os.PathLike)) or isinstance(os.fspath(out), bytes):
        what = "" if required is None else f" for {required}"
        raise error(f"{name} must be a folder's path (a str or Path){what}, not {out!r:.80}")
    if os.fspath(out) == "":  # Path("") is the current folder: its files would be written over
        give = (f'to write (e.g. {name}="my-sae"), or {name}=None to keep the SAE in memory only'
                if required is None else f"for {required}")
        raise error(f'{name}="" names no folder: give the folder {give}')
    path = Path(out)
    try:
        if "\0" in os.fspath(out):  # pathlib reads such a name as missing, and only writing it fails
            raise ValueError("embedded null byte")
        existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    except (OSError, ValueError) as e:  # a name too long to look up; ValueError: a NUL in it
        raise error(printable(f"{name}={str(out)!r:.80} cannot be a folder: {getattr(e, 'strerror', None) or e}",
                              keep="")) from None
    if not existing.is_dir():
        where = "is" if existing == path else f"is inside {existing}, which is"
        raise error(printable(f"{name}={str(out)!r} {where} a file, not a folder: choose a folder (it is created "
                              "if missing)", keep=""))
    return path


def check_regular(path: Path, error=ModelLoadError) -> None:
    """Refuse a path that is not a regular file, without opening it."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        raise error(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from e
    if not stat.S_ISREG(mode):
        raise error(f"{path} is not a regular file")


def open_regular(path: Path, error=ModelLoadError):
    """path opened for reading in binary, refused unless a regular file. Checked
    before opening and, opened without blocking, again on what was opened (the
    name may have been replaced in between)."""
    check_regular(path, error)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise error(f"{path} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_text(path: Path, what: str, error=ModelLoadError, limit: int | None = None) -> str:
    """A regular file of at most `limit` bytes (default MAX_JSON_BYTES), decoded as UTF-8."""
    limit = MAX_JSON_BYTES if limit is None else limit
    with open_regular(path, error) as f:
        try:
            raw = f.read(limit + 1)
        except OSError as e:
            raise error(f"cannot read {path}: {e.strerror or e}") from e
    if len(raw) > limit:
        raise error(f"{what} {path} is larger than {limit} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text ({e})") from e


def _whole(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(digits)} digits")
    return int(digits)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} overflows a float")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name}, which is not a number JSON allows")


def parse_json(text: str | bytes, what: str, error=ModelLoadError, top: type | tuple | None = dict):
    """JSON text as Python values, refusing what Python's parser lets through
    or fails on outside ValueError: huge integers, NaN and infinities, nesting
    deeper than the interpreter's recursion limit; and a top level not of type `top`."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")  # not json's guess among UTF-8, 16 and 32
        value = json.loads(text, parse_int=_whole, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise error(f"{what} is not valid JSON: it nests too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, or one of the refusals above
        raise error(f"{what} is not valid JSON: {e}") from e
    if top is not None and not isinstance(value, top):
        kind = "an object" if top is dict else "a list" if top is list else " or ".join(t.__name__ for t in top)
        raise error(f"{what} does not hold {kind} at its top level")
    return value


def read_json(path: Path, what: str, error=ModelLoadError, top: type | tuple | None = dict):
    """A JSON file, read and parsed within the limits above."""
    return parse_json(read_text(path, what, error), f"{what} {path}", error, top)


def inside(folder: Path, name, what: str, error=ModelLoadError) -> Path:
    """folder / name, refused unless name is a relative path that stays inside
    folder: no '..' segment, not absolute, drive- or root-anchored under POSIX
    or Windows rules (the checks huggingface_hub makes on a repository's file names)."""
    if not isinstance(name, str) or "\0" in name:
        raise error(f"{what} must be a file name, not {name!r}")
    segments = name.replace("\\", "/").split("/")
    anchored = PurePosixPath(name).is_absolute() or any(
        PureWindowsPath(s).drive or PureWindowsPath(s).root for s in name.split("/")
    )
    if ".." in segments or anchored:
        raise error(f"{what} {name!r} leads outside {folder}")
    if printable(name, keep="") != name:  # it would reach a terminal in every message naming the file
        raise error(f"{what} {name!r} holds control or bidirectional-override characters")
    return folder / name
