"""Writing run and study records so that a reader, or a crash, never sees half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from moe_lab.errors import ConfigError


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


def write_json_atomic(path: Path, data) -> None:
    """Write to a temporary file in the same directory, then rename: a reader (or a crash) never sees
    half a file, and an existing file is only replaced by a complete one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    _readable_like_the_rest(fd)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    _readable_like_the_rest(fd)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
