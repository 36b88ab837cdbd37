"""Raw text corpora: each source gives a train and a validation `datasets.Dataset` of documents.

Every split has two string columns: `doc` (which play / file / row a document came from) and `text`.
Sources are looked up by name in `CORPUS_LOADERS`; a new source is one function plus one line there.
"""

import codecs
import contextlib
import glob
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from moe_lab.data.config import DataConfig
from moe_lab.data.plays import shakespeare_play_files, unknown_play_message
from moe_lab.errors import DataError, first_line

# The validation documents of a val_fraction split are drawn with this fixed seed, never the run seed,
# so every run of an experiment is evaluated on the same text.
VAL_SPLIT_SEED = 0

TEXT_SUFFIXES = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
}
COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zst", ".zip"}
# What a path that is not a regular file is, by its stat mode, for the one-line refusal.
SPECIAL_FILES = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


@dataclass
class Corpus:
    train: datasets.Dataset  # columns: doc, text
    val: datasets.Dataset
    descriptor: str  # names where the text came from, for cache keys and run records


# ----------------------------------------------------------------------------------------- shakespeare


def load_shakespeare(cfg: DataConfig, hf_cache_dir: Path) -> Corpus:
    """The 38 plays as documents; plays named in cfg.val_plays are the validation split."""
    plays = shakespeare_play_files()
    for name in cfg.val_plays:
        if name not in plays:
            raise DataError(f"data.val_plays: {unknown_play_message(name, list(plays))}")
    texts = [play.read_text(encoding="utf-8") for play in plays.values()]
    docs = datasets.Dataset.from_dict({"doc": list(plays), "text": texts})
    if not cfg.val_plays:
        train, val = split_by_fraction(docs, cfg.val_fraction)
        return Corpus(train, val, f"shakespeare(val_fraction={cfg.val_fraction})")
    is_val = [name in cfg.val_plays for name in plays]
    train = docs.select([i for i, v in enumerate(is_val) if not v])
    val = docs.select([i for i, v in enumerate(is_val) if v])
    return Corpus(train, val, f"shakespeare(val_plays={','.join(sorted(cfg.val_plays))})")


# --------------------------------------------------------------------------------------- local files


def _expand(patterns: list[str], key: str) -> list[Path]:
    """Paths and glob patterns -> existing regular files, in the order given."""
    paths = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(str(Path(pattern).expanduser())))
            if not matches:
                raise DataError(f"{key}: no file matches {pattern!r}")
            paths.extend(Path(m) for m in matches)
        else:
            paths.append(Path(pattern).expanduser())
    for path in paths:
        _check_regular_file(path, key)
    return paths


def _check_regular_file(path: Path, key: str) -> None:
    """DataError unless `path` is a regular file. Decided by stat, before anything opens it: reading a
    FIFO waits for a writer that may never come, and a device such as /dev/zero never ends."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError(f"{key}: file not found: {path}") from None
    except OSError as err:
        raise DataError(f"{key}: cannot look at {path}: {err.strerror}") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{key}: {path} is a directory, not a text file (for the files in it, use a glob: {path}/*)")
    if not stat.S_ISREG(mode):
        kind = next((name for is_kind, name in SPECIAL_FILES if is_kind(mode)), "special file")
        raise DataError(f"{key}: {path} is a {kind}, not a regular file")


def file_format(path: Path, fmt: str) -> str:
    """The datasets builder for a file: cfg.format, or inferred from the extension when "auto"."""
    if fmt != "auto":
        return fmt
    suffixes = [s for s in path.suffixes if s not in COMPRESSION_SUFFIXES]
    if suffixes and suffixes[-1].lower() in TEXT_SUFFIXES:
        return TEXT_SUFFIXES[suffixes[-1].lower()]
    raise DataError(f"{path}: cannot infer the format from the extension; set data.format to text, json or parquet")


def _load_file(path: Path, cfg: DataConfig, hf_cache_dir: Path, key: str) -> datasets.Dataset:
    fmt = file_format(path, cfg.format)
    _refuse_binary(path, fmt, key)
    # A whole text file is one document, so how the builder would split lines cannot change the text
    # (it still reads in universal-newline mode, like open(): "\r\n" and "\r" become "\n").
    options = {"sample_by": "document"} if fmt == "text" else {}
    try:
        with _quiet_progress():  # one bar per small local file is noise; hub downloads keep theirs
            raw = datasets.load_dataset(
                fmt, data_files=[str(path)], split="train", cache_dir=str(hf_cache_dir), **options
            )
    except Exception as err:  # the builders raise many kinds; the person needs the file and the reason
        raise DataError(f"{path}: cannot be read as {fmt}: {_load_failure(path, err)}") from None
    field = "text" if fmt == "text" else cfg.text_field
    docs = _text_column(raw, field, str(path), "data.text_field")
    names = [path.name] if fmt == "text" else [f"{path.name}:{row}" for row in range(len(docs))]
    return docs.add_column("doc", names[: len(docs)]).select_columns(["doc", "text"])


def _load_files(paths: list[Path], cfg: DataConfig, hf_cache_dir: Path, key: str) -> datasets.Dataset:
    per_file = [_load_file(path, cfg, hf_cache_dir, key) for path in paths]
    # Each file must hold text: an empty one in a list is a mistake (a wrong path, a failed export).
    empty = [str(path) for path, docs in zip(paths, per_file, strict=True) if not _has_text(docs)]
    if empty:
        raise DataError(f"{key}: no text in {', '.join(empty)} (empty or whitespace only)")
    return datasets.concatenate_datasets(per_file)


def _refuse_binary(path: Path, fmt: str, key: str) -> None:
    """DataError for a text or JSON file holding a NUL byte: binary data (or UTF-16) that UTF-8 decoding
    alone would let through. Compressed files are checked by their builder, after decompression."""
    if fmt not in ("text", "json") or set(path.suffixes) & COMPRESSION_SUFFIXES:
        return
    offset = _first_nul(path)
    if offset is not None:
        raise DataError(f"{key}: {path} holds binary data (a NUL byte at offset {offset}); expected UTF-8 text")


def _first_nul(path: Path, chunk_size: int = 1 << 20) -> int | None:
    """The byte offset of the first NUL byte of `path`, or None."""
    offset = 0
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            if (found := chunk.find(b"\0")) >= 0:
                return offset + found
            offset += len(chunk)
    return None


def load_files(cfg: DataConfig, hf_cache_dir: Path) -> Corpus:
    """Local txt / jsonl / parquet files through the `datasets` builders."""
    train_paths = _expand(cfg.train_files, "data.train_files")
    train = _load_files(train_paths, cfg, hf_cache_dir, "data.train_files")
    if cfg.val_files:
        val = _load_files(_expand(cfg.val_files, "data.val_files"), cfg, hf_cache_dir, "data.val_files")
        held_out = "val_files=" + ",".join(cfg.val_files)
    else:
        train, val = split_by_fraction(train, cfg.val_fraction)
        held_out = f"val_fraction={cfg.val_fraction}"
    return Corpus(train, val, f"files({','.join(cfg.train_files)}; {held_out}; format={cfg.format})")


# ---------------------------------------------------------------------------------- Hugging Face hub


def _load_hub_split(cfg: DataConfig, split: str, hf_cache_dir: Path, key: str) -> datasets.Dataset:
    origin = f"{cfg.hub_name}[{split}]"
    try:
        raw = datasets.load_dataset(cfg.hub_name, cfg.hub_config or None, split=split, cache_dir=str(hf_cache_dir))
    except Exception as err:  # network, unknown name, unknown split: all end here
        raise DataError(f"{key}: cannot load {origin}: {first_line(err)}") from err
    docs = _text_column(raw, cfg.text_field, origin, "data.text_field")
    names = [f"{split}:{row}" for row in range(len(docs))]
    docs = docs.add_column("doc", names).select_columns(["doc", "text"])
    _require_text(docs, f"{key}: no text in {origin}")
    return docs


def load_hub(cfg: DataConfig, hf_cache_dir: Path) -> Corpus:
    """`datasets.load_dataset(hub_name, hub_config)`: a hub name, or a local dataset directory."""
    train = _load_hub_split(cfg, cfg.hub_train_split, hf_cache_dir, "data.hub_train_split")
    if cfg.hub_val_split:
        val = _load_hub_split(cfg, cfg.hub_val_split, hf_cache_dir, "data.hub_val_split")
        held_out = f"val_split={cfg.hub_val_split}"
    else:
        train, val = split_by_fraction(train, cfg.val_fraction)
        held_out = f"val_fraction={cfg.val_fraction}"
    config = f"/{cfg.hub_config}" if cfg.hub_config else ""
    return Corpus(train, val, f"hub({cfg.hub_name}{config}; train_split={cfg.hub_train_split}; {held_out})")


# ------------------------------------------------------------------------------------------- shared

CORPUS_LOADERS: dict[str, Callable[[DataConfig, Path], Corpus]] = {
    "shakespeare": load_shakespeare,
    "files": load_files,
    "hub": load_hub,
}


def load_corpus(cfg: DataConfig, hf_cache_dir: Path) -> Corpus:
    """The train/val corpus named by cfg.source; `hf_cache_dir` holds the datasets library's arrow cache."""
    return CORPUS_LOADERS[cfg.source](cfg, hf_cache_dir)


def split_by_fraction(docs: datasets.Dataset, val_fraction: float) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Hold out about val_fraction of the text, deterministically.

    With enough documents, whole documents are held out (no text shared between splits). With too few
    (e.g. a single input.txt), each document's tail, cut at a line start, becomes validation text.
    """
    n_val = min(round(len(docs) * val_fraction), len(docs) - 1)
    if n_val >= 1:
        val_rows = np.sort(np.random.default_rng(VAL_SPLIT_SEED).permutation(len(docs))[:n_val])
        train_rows = np.setdiff1d(np.arange(len(docs)), val_rows)
        return docs.select(train_rows), docs.select(val_rows)
    heads, tails = zip(*(_split_tail(text, val_fraction) for text in docs["text"]), strict=True)
    names = list(docs["doc"])
    return (
        datasets.Dataset.from_dict({"doc": names, "text": list(heads)}),
        datasets.Dataset.from_dict({"doc": names, "text": list(tails)}),
    )


def _split_tail(text: str, val_fraction: float) -> tuple[str, str]:
    cut = int(len(text) * (1.0 - val_fraction))
    line_start = text.find("\n", cut) + 1
    if 0 < line_start < len(text):
        cut = line_start
    return text[:cut], text[cut:]


def _text_column(raw: datasets.Dataset, field: str, origin: str, key: str) -> datasets.Dataset:
    """Only the text column of a loaded dataset, renamed to `text`."""
    if field not in raw.column_names:
        columns = ", ".join(raw.column_names)
        raise DataError(f"{origin}: {key}={field!r} not found; available columns: {columns}")
    dtype = getattr(raw.features[field], "dtype", None)
    if dtype not in ("string", "large_string"):
        raise DataError(f"{origin}: {key}={field!r} holds {raw.features[field]}, not strings")
    docs = raw.select_columns([field])
    return docs.rename_column(field, "text") if field != "text" else docs


def _has_text(docs: datasets.Dataset) -> bool:
    """Whether any document holds more than whitespace."""
    batches = docs.iter(batch_size=1024)
    return any(text and not text.isspace() for batch in batches for text in batch["text"])


def _require_text(docs: datasets.Dataset, message: str) -> None:
    if not _has_text(docs):
        raise DataError(message)


@contextlib.contextmanager
def _quiet_progress():
    """No progress bars, and no log lines: a builder that fails logs its own version of the error
    we are about to raise, which would put a second line before the `error:` line."""
    was_enabled = datasets.is_progress_bar_enabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if was_enabled:
            datasets.enable_progress_bars()


def _load_failure(path: Path, err: Exception) -> str:
    """Why a builder could not read `path`: the cause, not the builder's generic wrapper ("An error
    occurred while generating the dataset"); for text that is not UTF-8, where the first bad byte is."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, UnicodeDecodeError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        innermost = err
        while innermost.__cause__ is not None:
            innermost = innermost.__cause__
        return first_line(innermost)
    where = _first_invalid_utf8(path) if not set(path.suffixes) & COMPRESSION_SUFFIXES else None
    if where is None:
        return f"not UTF-8 text ({first_line(cause)}); re-encode it as UTF-8"
    offset, line, value = where
    return f"not UTF-8 text: byte 0x{value:02x} at offset {offset} (line {line}); re-encode it as UTF-8"


def _first_invalid_utf8(path: Path, chunk_size: int = 1 << 20) -> tuple[int, int, int] | None:
    """(byte offset, line number, byte value) of the first byte of `path` that is not valid UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = newlines = 0
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous chunk
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                newlines += err.object[pending : err.start].count(b"\n")
                return offset - pending + err.start, newlines + 1, err.object[err.start]
            offset += len(chunk)
            newlines += chunk.count(b"\n")
    cut = decoder.getstate()[0]  # the file ends inside a character
    return (offset - len(cut), newlines + 1, cut[0]) if cut else None
