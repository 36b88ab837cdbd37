"""Cache entries written so that a failed or interrupted data preparation leaves the cache as it was.

Used by the token cache (`cache.py`) and by tokenizers that are trained and cached (`tokenizers.py`).
"""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class CacheWrites:
    """The cache entries one data preparation writes, staged in a folder inside the cache and renamed
    into place only by `commit()`: a preparation that fails at any step (a file that does not parse,
    a split shorter than one block) leaves the cache exactly as it was. Use as a context manager; on
    exit the staging folder goes, and so do the cache folders it had to create when nothing was
    committed.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        missing = [self.root, *self.root.parents]
        self._created = [p for p in missing[: next(i for i, p in enumerate(missing) if p.exists())]]
        self.root.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix=".tmp-prepare-", dir=self.root))  # dropped on exit
        self._pending: list[tuple[Path, Path]] = []  # (staged, final)
        self._committed = False

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
            for folder in self._created:  # deepest first; one that is not empty stays
                with contextlib.suppress(OSError):
                    folder.rmdir()


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
