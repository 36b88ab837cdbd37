"""Tokenised splits on disk: flat token files, written atomically, read memory-mapped.

An entry is keyed by (corpus descriptor, tokenizer descriptor, content hash of the raw text), so a
second run over the same text with the same tokenizer reads the tokens back without tokenising.
Each entry is a directory `<cache>/tokens/<kind>-<key>/` holding `train.bin`, `val.bin` (raw
uint16/uint32 tokens) and `meta.json` (token and UTF-8 byte counts per split, for bits-per-byte, and
the sha256 of each token file). Every load checks the token files against meta.json; a damaged entry is
rebuilt (see `read_entry`).
"""

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from moe_lab.data.staging import CacheWrites, atomic_directory, set_aside_damaged
from moe_lab.data.tokenizers import DOCS_PER_BATCH, Tokenizer
from moe_lab.errors import first_line

SPLITS = ("train", "val")
# Bump when the on-disk layout or the way documents are joined changes, so old entries are not reused.
CACHE_FORMAT_VERSION = 1
META_FILE = "meta.json"


@dataclass(frozen=True)
class TokenSplit:
    """One cached split: where its tokens are and how much text they encode."""

    path: Path
    dtype: str
    n_tokens: int
    n_bytes: int  # UTF-8 bytes of the text (documents plus separators) the tokens encode

    @property
    def bytes_per_token(self) -> float:
        # bits per byte = loss_nats / ln 2 / bytes_per_token: a loss comparable across tokenizers.
        return self.n_bytes / self.n_tokens

    def open(self) -> np.ndarray:
        """The tokens, memory-mapped read-only (nothing is read until indexed)."""
        if self.n_tokens == 0:  # an empty file cannot be mapped
            return np.empty(0, dtype=self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.n_tokens,))


def iter_documents(docs: datasets.Dataset, separator: str) -> Iterator[list[str]]:
    """Batches of document texts, each followed by the separator, exactly as they are tokenised."""
    for batch in docs.iter(batch_size=DOCS_PER_BATCH):
        yield [(text or "") + separator for text in batch["text"]]


def content_hash(docs: datasets.Dataset, separator: str) -> str:
    """sha256 of the text of a split, document boundaries included."""
    digest = hashlib.sha256()
    for batch in iter_documents(docs, separator):
        for text in batch:
            raw = text.encode("utf-8")
            # The length makes ("ab", "c") and ("a", "bc") differ: tokenisers see documents separately.
            digest.update(len(raw).to_bytes(8, "little"))
            digest.update(raw)
    return digest.hexdigest()


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


def entry_dir(cache_dir: Path, corpus_descriptor: str, tokenizer: Tokenizer, split_hashes: dict[str, str]) -> Path:
    key = json.dumps(
        {
            "version": CACHE_FORMAT_VERSION,
            "corpus": corpus_descriptor,
            "tokenizer": tokenizer.descriptor,
            "content": split_hashes,
        },
        sort_keys=True,
    )
    return cache_dir / "tokens" / f"{tokenizer.kind}-{hashlib.sha256(key.encode()).hexdigest()[:20]}"


def load_or_tokenize(
    cache_dir: Path,
    corpus_descriptor: str,
    splits: dict[str, datasets.Dataset],
    split_hashes: dict[str, str],
    tokenizer: Tokenizer,
    separator: str,
    writes: CacheWrites | None = None,
) -> dict[str, TokenSplit]:
    """The cached token splits for this corpus and tokenizer, tokenising only on a cache miss. The
    splits' paths are those of the cache entry (with `writes`, valid once they are committed)."""
    entry = entry_dir(cache_dir, corpus_descriptor, tokenizer, split_hashes)
    meta = read_entry(entry, list(splits))
    if meta is None:
        with atomic_directory(entry, writes) as tmp:
            meta = {
                "corpus": corpus_descriptor,
                "tokenizer": tokenizer.descriptor,
                "content": split_hashes,
                "dtype": token_dtype(tokenizer.vocab_size),
                "splits": {},
            }
            for name, docs in splits.items():
                path = tmp / f"{name}.bin"
                meta["splits"][name] = _write_tokens(path, docs, tokenizer, separator, meta["dtype"])
            # Written last: an entry directory with a meta.json is complete.
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    counts = meta["splits"]
    return {
        name: TokenSplit(entry / f"{name}.bin", meta["dtype"], counts[name]["n_tokens"], counts[name]["n_bytes"])
        for name in splits
    }


def read_entry(entry: Path, names: list[str]) -> dict | None:
    """The meta.json of the cache entry `entry` when it is intact; None when there is no entry. A damaged
    one (a token file truncated, missing or altered, meta.json unreadable) is set aside with one warning
    line, so the caller builds it again. Entries written before hashes were recorded are checked by
    length, and their hashes recorded now."""
    if not os.path.lexists(entry):
        return None
    try:
        meta = json.loads((entry / META_FILE).read_text(encoding="utf-8"))
        digests = _token_file_digests(entry, meta, names)
    except (OSError, ValueError) as err:  # ValueError: not UTF-8, not JSON, or not what meta.json says
        set_aside_damaged(entry, "token cache entry", first_line(err))
        return None
    if any("sha256" not in meta["splits"][name] for name in names):
        _record_digests(entry, meta, digests)
    return meta


def _token_file_digests(entry: Path, meta: dict, names: list[str]) -> dict[str, str]:
    """The sha256 of each token file of an entry, once each has the length meta.json records and the
    hash, where one is recorded. ValueError says what is wrong."""
    try:
        itemsize = np.dtype(meta["dtype"]).itemsize
        counts = {name: meta["splits"][name] for name in names}
        if not all(isinstance(c["n_tokens"], int) and isinstance(c["n_bytes"], int) for c in counts.values()):
            raise TypeError("token and byte counts must be integers")
        sizes = {name: c["n_tokens"] * itemsize for name, c in counts.items()}
    except (LookupError, TypeError, ValueError) as err:  # JSON, but not of the shape written
        raise ValueError(f"{META_FILE} is malformed ({type(err).__name__}: {first_line(err)})") from None
    digests = {}
    for name, size in sizes.items():
        path = entry / f"{name}.bin"
        if (found := path.stat().st_size) != size:
            raise ValueError(f"{path.name} holds {found} bytes, {size} expected")
        with open(path, "rb") as f:
            digests[name] = hashlib.file_digest(f, "sha256").hexdigest()
        if counts[name].get("sha256", digests[name]) != digests[name]:
            raise ValueError(f"{path.name} does not match its recorded sha256")
    return digests


def _record_digests(entry: Path, meta: dict, digests: dict[str, str]) -> None:
    """Add the token files' hashes to an entry's meta.json (replaced atomically), so later damage is
    found; where the entry cannot be written the entry stays as it was."""
    for name, digest in digests.items():
        meta["splits"][name]["sha256"] = digest
    with contextlib.suppress(OSError):
        fd, tmp = tempfile.mkstemp(prefix=f".{META_FILE}.", suffix=".tmp", dir=entry)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(meta, indent=2))
            os.replace(tmp, entry / META_FILE)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _write_tokens(
    path: Path, docs: datasets.Dataset, tokenizer: Tokenizer, separator: str, dtype: str
) -> dict[str, int | str]:
    """Tokenise a split batch by batch, streaming tokens to `path` so memory stays bounded."""
    n_tokens = n_bytes = 0
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for batch in iter_documents(docs, separator):
            n_bytes += sum(len(text.encode("utf-8")) for text in batch)
            for ids in tokenizer.encode_batch(batch):
                raw = np.asarray(ids, dtype=dtype).tobytes()
                out.write(raw)
                digest.update(raw)
                n_tokens += len(ids)
    return {"n_tokens": n_tokens, "n_bytes": n_bytes, "sha256": digest.hexdigest()}
