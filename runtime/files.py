"""Input files that cannot hang a reader, and output files and folders that are never left half-written.

Inputs: a FIFO named ``x.jpg`` blocks ``open()`` forever, ``/dev/zero`` never ends and ``/proc/self/mem``
reports 0 bytes; a symlink loop looks like a missing file to ``Path.exists()``. ``read_input_bytes`` opens
without blocking, accepts only regular files of a bounded size, and says which of these it met.

JSON inputs: ``read_json`` / ``parse_json`` turn every way a JSON file can be unreadable (including nesting too
deep for the parser) into one ChsError.

Outputs: ``atomic_output`` writes to a hidden temporary name beside the target and renames it into place
only when the writer finished (Ctrl-C leaves no partial file); ``replace_dir`` swaps a finished folder in.
``check_output_dir`` refuses impossible output locations before any work is done.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chs.runtime.errors import ChsError

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _os_error(e: OSError, path: Path, what: str) -> ChsError:
    if e.errno == errno.ENOENT:
        return ChsError(f"{what} not found: {path}")
    if e.errno == errno.ELOOP:
        return ChsError(f"{what} {path} is a symlink loop")
    if e.errno in (errno.EACCES, errno.EPERM):
        return ChsError(f"{what} {path}: permission denied")
    if e.errno == errno.ENOTDIR:
        return ChsError(f"{what} not found: {path} (a part of the path is not a folder)")
    return ChsError(f"cannot read {what} {path}: {e.strerror or e}")


def special_kind(mode: int) -> str | None:
    """'a FIFO (named pipe)', 'a character device', ... for st_mode values that are not files or folders."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return None


def _check_no_nul(path: str | os.PathLike, what: str) -> None:
    """os.stat/os.open raise a bare ValueError ('embedded null byte') for such a path."""
    if "\0" in os.fsdecode(path):
        raise ChsError(f"{what} path {os.fsdecode(path)!r:.80} contains a NUL byte")


def check_input(path: str | os.PathLike, what: str = "input") -> os.stat_result:
    """stat() of an input that must exist as a regular file or folder; ChsError naming what it is otherwise."""
    _check_no_nul(path, what)
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as e:
        raise _os_error(e, p, what) from None
    kind = special_kind(st.st_mode)
    if kind:
        raise ChsError(f"{what} {p} is {kind}, not a regular file")
    return st


def read_input_bytes(path: str | os.PathLike, what: str = "image", max_bytes: int | None = None) -> bytes:
    """All bytes of a regular file, without ever blocking on FIFOs or reading endless special files."""
    _check_no_nul(path, what)
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except IsADirectoryError:
        raise ChsError(f"{what} path is a directory, not a file: {p}") from None
    except OSError as e:
        raise _os_error(e, p, what) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ChsError(f"{what} path is a directory, not a file: {p}")
        kind = special_kind(st.st_mode)
        if kind:
            raise ChsError(f"{what} {p} is {kind}, not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ChsError(f"{what} {p} is too large ({st.st_size} bytes; the limit is {max_bytes})")
        if st.st_size == 0:
            try:
                probe = os.read(fd, 1)
            except OSError:
                probe = b"?"
            if probe:  # /proc and /sys files report size 0 but are not empty (or not readable at all)
                raise ChsError(f"{what} {p} is a special file of unknown size, not a regular file")
            raise ChsError(f"{what} {p} is empty (0 bytes)")
        chunks, left = [], st.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise _os_error(e, p, what) from None
    finally:
        os.close(fd)


def parse_json(text: str | bytes, what: str) -> Any:
    """JSON text parsed, or one ChsError naming ``what`` for every way it can be unreadable: not UTF-8, not
    JSON (with the line), nested too deeply for the parser, or a number too long to convert."""
    try:
        return json.loads(text.decode("utf-8-sig") if isinstance(text, bytes) else text)
    except UnicodeDecodeError:
        raise ChsError(f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ChsError(f"{what} is not valid JSON (line {e.lineno}: {e.msg})") from None
    except RecursionError:
        raise ChsError(f"{what} is nested too deeply to read") from None
    except ValueError as e:  # e.g. a 5000-digit integer
        raise ChsError(f"{what} cannot be read: {str(e)[:200]}") from None


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """A JSON file's content; the file is opened like every other input (no FIFO hangs, no special files),
    and every failure is one ChsError naming ``what`` and the path."""
    return parse_json(read_input_bytes(path, what), f"{what} {Path(path)}")


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Refuse an output folder that cannot be created, before any work: an existing file, or a path
    through a file, or a parent that is not writable; an empty path ('') is refused rather than taken as the
    current folder."""
    if isinstance(path, str) and not path:
        raise ChsError(f"{option} is an empty path ('')")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ChsError(f"{option} {p} exists and is not a folder")
    parent = p
    while not parent.exists():
        if parent.is_symlink():
            raise ChsError(f"{option} {p}: {parent} is a broken symlink")
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ChsError(f"{option} {p}: {parent} is a file, not a folder")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise ChsError(f"{option} {p}: folder {parent} is not writable")
    return p


def _temp_name(dst: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{dst.stem}.partial-", suffix=dst.suffix, dir=dst.parent)
    os.close(fd)
    return Path(name)


@contextmanager
def atomic_output(dst: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dst`` (same extension, so writers pick the same format); rename it
    to ``dst`` when the block ends normally, delete it when it raises (KeyboardInterrupt included).
    A block that wrote nothing (e.g. a video without frames) leaves no file."""
    target = Path(dst)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    try:
        yield tmp
        if not tmp.exists() or tmp.stat().st_size == 0:
            tmp.unlink(missing_ok=True)
            return
        tmp.chmod(0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder ``src`` to ``dst``, replacing what was there (renames, then a cleanup)."""
    src.chmod(0o755)  # mkdtemp folders are private; an output folder is meant to be shared
    old = None
    try:
        if dst.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
            os.replace(dst, old / dst.name)
        os.replace(src, dst)
    except BaseException:  # Ctrl-C between the two renames: the old folder goes back, not stays hidden
        if old is not None:
            if (old / dst.name).exists() and not dst.exists():
                os.replace(old / dst.name, dst)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["atomic_output", "check_input", "check_output_dir", "parse_json", "read_input_bytes", "read_json",
           "replace_dir", "special_kind"]
