"""Tokenizers behind one small interface, looked up by name in `TOKENIZER_BUILDERS`.

Every tokenizer has `encode(str) -> list[int]`, `decode(list[int]) -> str`, `encode_batch(list[str])`
(sequences of ids, used for the bulk work), `vocab_size`, `kind`, `descriptor` (changes whenever the
mapping from text to ids could change; part of cache keys and run records) and `save(dir)`.
"""

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import datasets
import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from moe_lab.data.config import DataConfig
from moe_lab.data.staging import CacheWrites, atomic_directory, set_aside_damaged
from moe_lab.errors import DataError, first_line

# Documents tokenised per encode_batch call: big enough for the tokenizers library to use all cores,
# small enough that one batch of a huge hub corpus fits in memory.
DOCS_PER_BATCH = 1024
INFO_FILE = "tokenizer_info.json"  # kind, descriptor and vocab_size of a saved tokenizer
HF_FILE = "tokenizer.json"  # the `tokenizers` library's own file, for bpe and pretrained


class Tokenizer(Protocol):
    kind: str  # registry name: byte | bpe | pretrained
    descriptor: str
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> Sequence[Sequence[int]]: ...

    def decode(self, ids: list[int]) -> str: ...

    def save(self, directory: Path) -> None: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255: nothing to train, every string encodable."""

    kind = "byte"
    descriptor = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(text.encode("utf-8"), dtype=np.uint8) for text in texts]

    def decode(self, ids: list[int]) -> str:
        # A sampled sequence may cut a multi-byte character: show U+FFFD rather than fail.
        return bytes(ids).decode("utf-8", errors="replace")

    def save(self, directory: Path) -> None:
        _write_info(Path(directory), self)


class HFTokenizer:
    """A `tokenizers.Tokenizer` (trained BPE or a pretrained one) behind the common interface."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, kind: str, name: str = ""):
        self.tokenizer = tokenizer
        self.kind = kind
        self.name = name
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        # Hash of the full serialisation: any change in merges, normaliser or added tokens changes it.
        digest = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:16]
        self.descriptor = f"{kind}-{self.vocab_size}-{digest}"

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [enc.ids for enc in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(directory / HF_FILE))
        _write_info(directory, self)


def _write_info(directory: Path, tok: Tokenizer) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    info = {
        "kind": tok.kind,
        "descriptor": tok.descriptor,
        "vocab_size": tok.vocab_size,
        "name": getattr(tok, "name", ""),
    }
    (directory / INFO_FILE).write_text(json.dumps(info, indent=2))


def load_saved_tokenizer(directory: Path) -> Tokenizer:
    """The tokenizer that `save(directory)` wrote (e.g. into a run directory)."""
    info_path = Path(directory) / INFO_FILE
    if not info_path.is_file():
        raise DataError(f"{info_path}: no saved tokenizer here")
    info = json.loads(info_path.read_text())
    if info["kind"] == "byte":
        return ByteTokenizer()
    return HFTokenizer(tokenizers.Tokenizer.from_file(str(Path(directory) / HF_FILE)), info["kind"], info["name"])


# ------------------------------------------------------------------------------------------ builders


def build_byte(
    cfg: DataConfig, train: datasets.Dataset, train_hash: str, cache_dir: Path, writes: CacheWrites | None = None
) -> ByteTokenizer:
    return ByteTokenizer()


def train_bpe(texts: Iterator[list[str]], vocab_size: int) -> tokenizers.Tokenizer:
    """Byte-level BPE (GPT-2 style): starts from the 256 bytes, so any text encodes without <unk>."""
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def build_bpe(
    cfg: DataConfig, train: datasets.Dataset, train_hash: str, cache_dir: Path, writes: CacheWrites | None = None
) -> HFTokenizer:
    """Train on the train split only (validation text must stay unseen), or reuse the cached result."""
    entry = cache_dir / "tokenizers" / f"bpe-{cfg.bpe_vocab_size}-{train_hash[:20]}"
    if os.path.lexists(entry):
        try:
            return HFTokenizer(tokenizers.Tokenizer.from_file(str(entry / HF_FILE)), "bpe")
        except Exception as err:  # missing, truncated, not JSON, not a tokenizer: the library raises many kinds
            set_aside_damaged(entry, "tokenizer cache entry", first_line(err))
    texts = (batch["text"] for batch in train.iter(batch_size=DOCS_PER_BATCH))
    with atomic_directory(entry, writes) as tmp:
        train_bpe(texts, cfg.bpe_vocab_size).save(str(tmp / HF_FILE))
        # Read back from the file, as a later run reads it from the cache: the same descriptor.
        return HFTokenizer(tokenizers.Tokenizer.from_file(str(tmp / HF_FILE)), "bpe")


def build_pretrained(
    cfg: DataConfig, train: datasets.Dataset, train_hash: str, cache_dir: Path, writes: CacheWrites | None = None
) -> HFTokenizer:
    name = cfg.pretrained_tokenizer
    try:
        tokenizer = tokenizers.Tokenizer.from_pretrained(name)
    except Exception as err:  # offline, unknown name, no tokenizer.json in the repo
        reason = first_line(err)
        raise DataError(f"data.pretrained_tokenizer: cannot load {name!r}: {reason}") from err
    return HFTokenizer(tokenizer, "pretrained", name)


TOKENIZER_BUILDERS: dict[str, Callable[[DataConfig, datasets.Dataset, str, Path, CacheWrites | None], Tokenizer]] = {
    "byte": build_byte,
    "bpe": build_bpe,
    "pretrained": build_pretrained,
}


def build_tokenizer(
    cfg: DataConfig, train: datasets.Dataset, train_hash: str, cache_dir: Path, writes: CacheWrites | None = None
) -> Tokenizer:
    """The tokenizer named by cfg.tokenizer; those that learn from data see only `train`. A trained one
    is written to the cache through `writes` when given (see CacheWrites)."""
    return TOKENIZER_BUILDERS[cfg.tokenizer](cfg, train, train_hash, cache_dir, writes)
