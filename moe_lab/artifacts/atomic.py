"""Writing run and study records so that a reader, or a crash, never sees half a file."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from moe_lab.errors import ConfigError, DiskSpaceError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def check_writable_dir(path: str | Path, key: str) -> None:
    """Raise ConfigError (naming `key`) unless `path` is a directory, or could be created as one, that
    this process can write in. Creates nothing: the probe directory is removed again at once."""
    path = Path(path).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is" if existing == path else f"would be under {existing}, which is"
        raise ConfigError(key, f"{path} {what} a file, not a directory")
    try:  # os.access says yes to root on read-only mounts; only trying to write tells
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=existing))
    except OSError as err:
        raise ConfigError(key, f"cannot write in {existing}: {err.strerror}") from None


def _process_umask() -> int:
    umask = os.umask(0o022)  # reading the umask means setting it; done once, at import
    os.umask(umask)
    return umask


_UMASK = _process_umask()


def _readable_like_the_rest(fd: int) -> None:
    """mkstemp creates its file 0600; give it the mode `open` would (0666 less the umask), so a run's
    records are as readable to a team as its other files."""
    os.fchmod(fd, 0o666 & ~_UMASK)


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w", needed: int | None = None) -> Iterator[IO]:
    """A file to write `path` through: a temporary file in the same directory (same filesystem, so the
    rename is atomic; never $TMPDIR), renamed to `path` once the block ends. A reader, or a crash, never
    sees half a file. On any failure the temporary file is removed and `path` is left as it was; a full
    disk or quota becomes DiskSpaceError, one line with the bytes `needed` (else the size of the file
    being replaced) and the bytes free."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            _readable_like_the_rest(f.fileno())
            yield f
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in NO_SPACE and not isinstance(err, DiskSpaceError):
            raise _no_space_error(path, err.errno, needed) from err
        raise


def _no_space_error(path: Path, code: int, needed: int | None) -> DiskSpaceError:
    if needed is None and path.is_file():
        needed = path.stat().st_size  # the file it replaces: about as large as the one it would be
    sizes = [f"about {_size(needed)} to write"] if needed else []
    with contextlib.suppress(OSError):
        sizes.append(f"{_size(shutil.disk_usage(path.parent).free)} free")
    detail = f" ({', '.join(sizes)})" if sizes else ""
    return DiskSpaceError(f"{path.parent}: {os.strerror(code)}{detail}", code)


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def write_json_atomic(path: Path, data) -> None:
    """Write to a temporary file in the same directory, then rename: a reader (or a crash) never sees
    half a file, and an existing file is only replaced by a complete one."""
    with atomic_file(path) as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)
