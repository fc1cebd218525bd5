"""detloop's own local files: whole or absent, and a full disk said in one line naming the path.

Every file that a later run takes as done because it exists (materialized dataset files, copies, exported
model artifacts, fonts, markers) is written to a temporary name beside it and renamed into place when
complete, so a crash or a full disk half-way never leaves a half-written file under the final name.
``ENOSPC`` / ``EDQUOT`` raised while writing becomes :class:`DiskFull`: one line with the path and the free
space left, instead of a traceback from deep inside a library.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from detloop.errors import DetloopError

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
CHUNK = 1 << 20
_open = open  # the one place files are opened for writing here (tests swap it for a disk that fills up)


class DiskFull(DetloopError):
    """The disk (or quota) ran out while detloop wrote a local file; the message names the file."""


def _free(path: Path) -> str:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError:
        return "free space unknown"
    return f"{usage.free / 2**20:.0f} MB free of {usage.total / 2**30:.1f} GB"


def disk_full(err: OSError, path: Path) -> DiskFull:
    """The one-line error for ``err`` (ENOSPC / EDQUOT) while writing ``path``."""
    what = "disk quota exceeded" if err.errno == errno.EDQUOT else "no space left on device"
    return DiskFull(f"{what} while writing {path} ({_free(Path(path))}); free some space or point data_dir "
                    f"at a larger disk, then run again (nothing half-written is kept)")


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn ENOSPC / EDQUOT raised in the block (by detloop or a library writing ``path``) into :class:`DiskFull`."""
    try:
        yield
    except OSError as err:
        if err.errno in NO_SPACE:
            raise disk_full(err, Path(path)) from err
        raise


def temp_name(path: Path) -> Path:
    """A hidden temporary name beside ``path``, unique per process and thread."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, then rename); returns ``path``.

    Raises:
        DiskFull: the disk filled up (the temporary file is removed; ``path`` keeps its old content or stays absent).
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        with writing(path), _open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """:func:`write_bytes` of UTF-8 text."""
    return write_bytes(path, text.encode())


def copy_file(src: str | Path, dst: str | Path) -> Path:
    """Copy ``src`` to ``dst`` atomically (chunked; ``dst`` appears only when complete)."""
    dst = Path(dst)
    tmp = temp_name(dst)
    try:
        with writing(dst), open(src, "rb") as fin, _open(tmp, "wb") as fout:
            for chunk in iter(lambda: fin.read(CHUNK), b""):
                fout.write(chunk)
        shutil.copymode(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def link_or_copy(src: str | Path, dst: str | Path) -> Path:
    """Hard-link ``src`` as ``dst`` (free), or copy it atomically where links are not possible; an existing
    ``dst`` is kept (it can only be complete: both ways create it whole)."""
    dst = Path(dst)
    if dst.exists():
        return dst
    try:
        with writing(dst):
            os.link(src, dst)
        return dst
    except FileExistsError:
        return dst
    except DiskFull:
        raise
    except OSError:  # another file system, no hard links: copy
        return copy_file(src, dst)


@contextlib.contextmanager
def building_dir(dest: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name; it replaces ``dest`` only when the block succeeds.

    Yields:
        The temporary directory to fill. On an error it is removed and ``dest`` is left as it was.
    """
    dest = Path(dest)
    tmp = temp_name(dest)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with writing(dest):
            yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
