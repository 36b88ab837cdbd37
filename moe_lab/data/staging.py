"""Cache entries written so that a failed or interrupted data preparation leaves the cache as it was.

Used by the token cache (`cache.py`) and by tokenizers that are trained and cached (`tokenizers.py`).
A cache folder that cannot be written is replaced by a temporary one for the run, and a damaged entry
is set aside to be rebuilt; each says so in one `warning:` line on stderr.
"""

import atexit
import contextlib
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from moe_lab.errors import DataError


class CacheWrites:
    """The cache entries one data preparation writes, staged in a folder inside the cache and renamed
    into place only by `commit()`: a preparation that fails at any step (a file that does not parse,
    a split shorter than one block) leaves the cache exactly as it was. Use as a context manager; on
    exit the staging folder goes, and so do the cache folders it had to create when nothing was
    committed.

    `root` is where the cache is: the folder given, or a temporary one (deleted when the process ends)
    when the folder given cannot be written (a file, read-only), with one warning line.
    """

    def __init__(self, root: Path):
        try:
            self._open(Path(root))
        except OSError as err:
            self._open(temporary_cache(Path(root), err))
        self._pending: list[tuple[Path, Path]] = []  # (staged, final)
        self._committed = False

    def _open(self, root: Path) -> None:
        missing = [root, *root.parents]
        created = missing[: next(i for i, p in enumerate(missing) if p.exists())]
        try:
            root.mkdir(parents=True, exist_ok=True)
            self.scratch = Path(tempfile.mkdtemp(prefix=".tmp-prepare-", dir=root))  # dropped on exit
        except OSError:
            _remove_empty(created)
            raise
        self.root, self._created = root, created

    def stage(self, final: Path) -> Path:
        """A new empty folder that becomes `final` on commit."""
        staged = self.scratch / f"entry{len(self._pending)}-{final.name}"
        staged.mkdir()
        self._pending.append((staged, final))
        return staged

    def commit(self) -> None:
        for staged, final in self._pending:
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staged, final)
            except OSError:
                if not final.is_dir():  # another process finished the same entry first: keep its copy
                    raise
        self._pending = []
        self._committed = True

    def __enter__(self) -> "CacheWrites":
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        if not self._committed:
            _remove_empty(self._created)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; one that is not empty stays
        with contextlib.suppress(OSError):
            folder.rmdir()


def warn(message: str) -> None:
    """One line on stderr, for what the data layer repairs or works around on its own."""
    print(f"warning: {message}", file=sys.stderr)


def temporary_cache(configured: Path, err: OSError) -> Path:
    """A fresh temporary cache folder for this process, used instead of `configured`, which `err` says
    cannot be written; DataError when no temporary folder can be made either."""
    why = _unusable_because(configured, err)
    try:
        root = Path(tempfile.mkdtemp(prefix="moe_lab-cache-"))
    except OSError as tmp_err:
        raise DataError(
            f"data cache {configured} is unusable ({why}), and no temporary folder can be made instead "
            f"({tmp_err.strerror}); set data.cache_dir or MOE_LAB_CACHE to a folder you can write in"
        ) from None
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    warn(
        f"data cache {configured} is unusable ({why}); using the temporary cache {root} for this run "
        "(set data.cache_dir or MOE_LAB_CACHE to a folder you can write in)"
    )
    return root


def _unusable_because(folder: Path, err: OSError) -> str:
    existing = folder
    while not os.path.exists(existing) and existing != existing.parent:  # os.path: never raises
        existing = existing.parent
    if not os.path.isdir(existing):
        return "it is a file" if existing == folder else f"it would be under the file {existing}"
    return f"cannot write in {existing}: {err.strerror}"


def set_aside_damaged(entry: Path, what: str, why: str) -> None:
    """Warn that a cache entry is damaged and delete it, so that it is built again. It is first renamed
    out of the way (atomic), so no process finds a half-deleted entry under its name."""
    aside = entry.with_name(f".tmp-damaged-{entry.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(entry, aside)
    except FileNotFoundError:  # another process set it aside first
        pass
    except OSError as err:
        raise DataError(f"{what} {entry} is damaged ({why}); delete it (it cannot be moved: {err.strerror})") from None
    warn(f"{what} {entry} is damaged ({why}); rebuilding it")
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            aside.unlink()


@contextlib.contextmanager
def atomic_directory(final: Path, writes: CacheWrites | None = None) -> Iterator[Path]:
    """Yield a temporary directory that is renamed to `final` only when the block completes (with
    `writes`, only when those writes are committed).

    An interrupted run leaves at most a stray `.tmp-*` directory, never a half-written `final`. When
    another process finished the same entry first, its copy is kept and ours discarded.
    """
    if writes is not None:
        yield writes.stage(final)
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
