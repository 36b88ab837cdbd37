"""Tokenised splits on disk: flat token files, written atomically, read memory-mapped.

An entry is keyed by (corpus descriptor, tokenizer descriptor, content hash of the raw text), so a
second run over the same text with the same tokenizer reads the tokens back without tokenising.
Each entry is a directory `<cache>/tokens/<kind>-<key>/` holding `train.bin`, `val.bin` (raw
uint16/uint32 tokens) and `meta.json` (token and UTF-8 byte counts per split, for bits-per-byte).
"""

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from moe_lab.data.staging import CacheWrites, atomic_directory
from moe_lab.data.tokenizers import DOCS_PER_BATCH, Tokenizer

SPLITS = ("train", "val")
# Bump when the on-disk layout or the way documents are joined changes, so old entries are not reused.
CACHE_FORMAT_VERSION = 1


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
    if (entry / "meta.json").is_file():
        meta = json.loads((entry / "meta.json").read_text())
    else:
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
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return {
        name: TokenSplit(entry / f"{name}.bin", meta["dtype"], counts["n_tokens"], counts["n_bytes"])
        for name, counts in meta["splits"].items()
    }


def _write_tokens(
    path: Path, docs: datasets.Dataset, tokenizer: Tokenizer, separator: str, dtype: str
) -> dict[str, int]:
    """Tokenise a split batch by batch, streaming tokens to `path` so memory stays bounded."""
    n_tokens = n_bytes = 0
    with open(path, "wb") as out:
        for batch in iter_documents(docs, separator):
            n_bytes += sum(len(text.encode("utf-8")) for text in batch)
            for ids in tokenizer.encode_batch(batch):
                tokens = np.asarray(ids, dtype=dtype)
                out.write(tokens.tobytes())
                n_tokens += len(tokens)
    return {"n_tokens": n_tokens, "n_bytes": n_bytes}
