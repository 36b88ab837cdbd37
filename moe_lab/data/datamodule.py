"""The Lightning DataModule: corpus -> tokenizer -> cached token splits -> (x, y) batches."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Subset

from moe_lab.data.blocks import TokenBlocks, check_block_fits
from moe_lab.data.cache import SPLITS, TokenSplit, content_hash, load_or_tokenize
from moe_lab.data.config import DataConfig, resolve_cache_dir, validate_data_config
from moe_lab.data.corpora import load_corpus
from moe_lab.data.sampler import EpochBatchSampler, ResumableDataLoader
from moe_lab.data.staging import CacheWrites
from moe_lab.data.tokenizers import Tokenizer, build_tokenizer


@dataclass
class PreparedData:
    corpus_descriptor: str
    tokenizer: Tokenizer
    splits: dict[str, TokenSplit]  # "train", "val"
    data_hash: str  # content hash of the raw text of both splits
    cache_dir: Path  # the cache used: the one configured, or a temporary one when that cannot be written


def prepare(cfg: DataConfig, cache_dir: Path) -> PreparedData:
    """Load the corpus, build the tokenizer and the token cache; cheap when everything is cached.

    The raw text is always read and hashed (seconds for Shakespeare) so a changed file can never be
    served stale tokens; tokenising and BPE training happen only on a cache miss. New cache entries
    appear only when every step succeeded (see CacheWrites).
    """
    with CacheWrites(cache_dir) as writes:
        cache_dir = writes.root  # a temporary folder, with a warning, when `cache_dir` cannot be written
        # Hub downloads go to the shared `datasets` cache (fetching them again costs network time).
        # Local files are parsed into a scratch cache dropped afterwards: their text is read and
        # hashed on every run anyway, and a file that fails to parse must leave nothing behind.
        corpus = load_corpus(cfg, cache_dir / "hf" if cfg.source == "hub" else writes.scratch / "hf")
        docs = {"train": corpus.train, "val": corpus.val}
        hashes = {name: content_hash(docs[name], cfg.doc_separator) for name in SPLITS}
        tokenizer = build_tokenizer(cfg, corpus.train, hashes["train"], cache_dir, writes)
        splits = load_or_tokenize(cache_dir, corpus.descriptor, docs, hashes, tokenizer, cfg.doc_separator, writes)
        for name, split in splits.items():  # before commit: a corpus too short for one block caches nothing
            check_block_fits(split, cfg.block_size, f"the {name} split of {corpus.descriptor}")
        writes.commit()
    data_hash = hashlib.sha256(f"{hashes['train']}:{hashes['val']}".encode()).hexdigest()[:16]
    return PreparedData(corpus.descriptor, tokenizer, splits, data_hash, cache_dir)


def evenly_spaced(n_blocks: int, n_wanted: int) -> list[int]:
    """Indices of n_wanted blocks spread evenly over all n_blocks (all of them when n_wanted is 0 or
    more): a limited validation then samples every held-out document (the first blocks alone would be
    the beginning of one play), and the same blocks for every run."""
    if not n_wanted or n_wanted >= n_blocks:
        return list(range(n_blocks))
    return [i * n_blocks // n_wanted for i in range(n_wanted)]


class TextDataModule(pl.LightningDataModule):
    """Next-token batches over a text corpus.

    After `setup()`: `vocab_size`, `tokenizer`, `bytes_per_token` ({"train", "val"} -> float, for
    bits per byte), `data_hash` (for run records), `train_dataloader()` / `val_dataloader()` giving
    (x, y) LongTensors of shape [batch_size, block_size] with y = x shifted left by one token.
    """

    def __init__(self, cfg: DataConfig, seed: int = 0, val_batches: int = 0):
        super().__init__()
        validate_data_config(cfg)
        self.cfg = cfg
        self.seed = seed
        self.val_batches = val_batches  # validation batches per evaluation; 0: the whole held-out split
        self.cache_dir = resolve_cache_dir(cfg)
        self._prepared: PreparedData | None = None
        self.tokenizer: Tokenizer | None = None  # set by setup()

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node: the one place that may tokenise or train BPE.
        self._prepared = prepare(self.cfg, self.cache_dir)
        # Lightning calls this again in fit(): a temporary cache standing in for the configured one is
        # reused then, not made (and warned about) a second time.
        self.cache_dir = self._prepared.cache_dir

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        prepared = self._prepared or prepare(self.cfg, self.cache_dir)
        self.tokenizer = prepared.tokenizer
        self.vocab_size = prepared.tokenizer.vocab_size
        self.data_hash = prepared.data_hash
        self.corpus_descriptor = prepared.corpus_descriptor
        self.token_splits = prepared.splits
        self.bytes_per_token = {name: split.bytes_per_token for name, split in prepared.splits.items()}
        self.train_blocks = TokenBlocks(prepared.splits["train"], self.cfg.block_size, "train")
        self.val_blocks = TokenBlocks(prepared.splits["val"], self.cfg.block_size, "val")

    def train_dataloader(self) -> DataLoader:
        n_workers = self.cfg.num_workers
        sampler = EpochBatchSampler(len(self.train_blocks), self.cfg.batch_size, self.seed)
        return ResumableDataLoader(
            self.train_blocks,
            batch_sampler=sampler,
            position_fn=self._training_position,
            num_workers=n_workers,
            persistent_workers=n_workers > 0,
        )

    def _training_position(self) -> tuple[int, int]:
        """(epoch, batches of it already trained on), read from the trainer's progress counters."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        loop = trainer.fit_loop.epoch_loop
        return trainer.current_epoch, loop.batch_progress.current.processed

    def val_dataloader(self) -> DataLoader:
        n_workers = self.cfg.num_workers
        return DataLoader(
            Subset(self.val_blocks, evenly_spaced(len(self.val_blocks), self.val_batches * self.cfg.batch_size)),
            batch_size=self.cfg.batch_size,
            shuffle=False,
            num_workers=n_workers,
            persistent_workers=n_workers > 0,
        )

    def save_tokenizer(self, run_dir: str | Path) -> None:
        """Copy the tokenizer in use into a run directory (see tokenizers.load_saved_tokenizer)."""
        if self.tokenizer is None:
            raise RuntimeError("TextDataModule.save_tokenizer: call setup() first")
        self.tokenizer.save(Path(run_dir))

    def data_record(self) -> dict:
        """What a run record needs to say which data a run saw."""
        return {
            "corpus": self.corpus_descriptor,
            "tokenizer": self.tokenizer.descriptor,
            "data_hash": self.data_hash,
            "vocab_size": self.vocab_size,
            "n_tokens": {name: split.n_tokens for name, split in self.token_splits.items()},
            "bytes_per_token": self.bytes_per_token,
        }
