"""The data layer facing what goes wrong on disk: damaged token cache entries are rebuilt with one warning,
an unusable cache folder is replaced by a temporary one with one warning, and a data path that is not a
text file (a directory, a FIFO, a device, binary data, nothing but whitespace) is refused in one line.

Each is driven through the real loading path: the DataModule's prepare_data/setup, and the training CLI
for the exit code, the console and the run that follows.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from moe_lab.data import DataConfig
from moe_lab.data.cache import entry_dir
from moe_lab.data.datamodule import TextDataModule
from moe_lab.data.tokenizers import ByteTokenizer
from moe_lab.errors import DataError
from tests.helpers import write_tiny_experiment

ROOT = Path(__file__).resolve().parent.parent
TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(80))


def write_corpus(folder: Path, name: str = "corpus.txt", content: str | bytes = TEXT) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def files_config(cache: Path | str, *train: Path, **overrides) -> DataConfig:
    return DataConfig(
        source="files", train_files=[str(p) for p in train], cache_dir=str(cache), block_size=16, **overrides
    )


def prepared(cfg: DataConfig) -> TextDataModule:
    dm = TextDataModule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def tokens_of(dm: TextDataModule) -> dict[str, list[int]]:
    return {name: split.open().tolist() for name, split in dm.token_splits.items()}


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def token_entry(cache: Path) -> Path:
    (entry,) = [p for p in (cache / "tokens").iterdir() if not p.name.startswith(".")]
    return entry


def run_train(tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    exp = write_tiny_experiment(tmp / "tiny.yaml", tmp / "cache", steps=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    args = [sys.executable, "-m", "moe_lab.train", str(exp), f"output_dir={tmp / 'runs'}", *overrides]
    return subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)


def assert_one_error_line(result: subprocess.CompletedProcess, start: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {start}"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


# ------------------------------------------------------------------------------- damaged cache entries


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


DAMAGES = {
    "train.bin truncated": (lambda entry: truncate(entry / "train.bin"), "train.bin holds"),
    "val.bin with a flipped bit": (lambda entry: flip_a_byte(entry / "val.bin"), "val.bin does not match"),
    "train.bin missing": (lambda entry: (entry / "train.bin").unlink(), "No such file"),
    "meta.json not JSON": (lambda entry: (entry / "meta.json").write_text("{garbage"), "Expecting property name"),
    "meta.json not UTF-8": (lambda entry: (entry / "meta.json").write_bytes(b"\xff\xfe{}"), "utf-8"),
    "meta.json of another shape": (lambda entry: (entry / "meta.json").write_text("[]"), "meta.json is malformed"),
    "meta.json missing": (lambda entry: (entry / "meta.json").unlink(), "No such file"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_damaged_token_cache_entry_is_rebuilt_with_one_warning(tmp_path, capsys, damage):
    cfg = files_config(tmp_path / "cache", write_corpus(tmp_path))
    intact = tokens_of(prepared(cfg))
    entry = token_entry(tmp_path / "cache")
    assert warning_lines(capsys.readouterr().err) == []
    plant, why = DAMAGES[damage]
    plant(entry)

    assert tokens_of(prepared(cfg)) == intact
    (line,) = warning_lines(capsys.readouterr().err)
    assert line.startswith(f"warning: token cache entry {entry} is damaged (") and why in line, line
    assert line.endswith("); rebuilding it")
    # Rebuilt in place: the next load finds it intact, and nothing set aside is left behind.
    assert tokens_of(prepared(cfg)) == intact
    assert warning_lines(capsys.readouterr().err) == []
    assert sorted(p.name for p in (tmp_path / "cache" / "tokens").iterdir()) == [entry.name]


def test_entry_without_recorded_hashes_is_checked_by_length_and_kept(tmp_path, capsys):
    """An entry written before hashes were recorded is reused (no rebuild), and its hashes recorded."""
    cfg = files_config(tmp_path / "cache", write_corpus(tmp_path))
    intact = tokens_of(prepared(cfg))
    entry = token_entry(tmp_path / "cache")
    meta = json.loads((entry / "meta.json").read_text())
    hashes = {name: counts.pop("sha256") for name, counts in meta["splits"].items()}
    (entry / "meta.json").write_text(json.dumps(meta, indent=2))
    train_bin = (entry / "train.bin").stat()

    assert tokens_of(prepared(cfg)) == intact
    assert warning_lines(capsys.readouterr().err) == []
    assert (entry / "train.bin").stat().st_mtime_ns == train_bin.st_mtime_ns  # reused, not rewritten
    recorded = json.loads((entry / "meta.json").read_text())["splits"]
    assert {name: counts["sha256"] for name, counts in recorded.items()} == hashes

    # Without a hash, a token file of the wrong length is still found.
    meta = json.loads((entry / "meta.json").read_text())
    del meta["splits"]["train"]["sha256"]
    (entry / "meta.json").write_text(json.dumps(meta))
    truncate(entry / "train.bin")
    assert tokens_of(prepared(cfg)) == intact
    (line,) = warning_lines(capsys.readouterr().err)
    assert "train.bin holds" in line


def test_cache_keys_of_existing_entries_are_unchanged():
    """Existing caches stay valid: the key of an entry is what it was before hashes were recorded."""
    entry = entry_dir(
        Path("cache"), "files(x; val_fraction=0.05; format=auto)", ByteTokenizer(), {"train": "a", "val": "b"}
    )
    assert entry == Path("cache/tokens/byte-c72df4cfe7ed5b46d44e")


def test_damaged_bpe_tokenizer_entry_is_retrained_with_one_warning(tmp_path, capsys):
    cfg = files_config(tmp_path / "cache", write_corpus(tmp_path), tokenizer="bpe", bpe_vocab_size=300)
    first = prepared(cfg)
    (entry,) = (tmp_path / "cache" / "tokenizers").iterdir()
    truncate(entry / "tokenizer.json")
    capsys.readouterr()

    again = prepared(cfg)
    assert again.tokenizer.descriptor == first.tokenizer.descriptor
    assert tokens_of(again) == tokens_of(first)
    (line,) = warning_lines(capsys.readouterr().err)
    assert line.startswith(f"warning: tokenizer cache entry {entry} is damaged (") and line.endswith("rebuilding it")


@pytest.mark.slow  # end to end through the CLI; the rebuild itself is tested above for every damage
def test_training_cli_rebuilds_a_damaged_entry_and_trains(tmp_path):
    corpus = write_corpus(tmp_path)
    prepared(files_config(tmp_path / "cache", corpus))  # the entry the CLI run will look up
    entry = token_entry(tmp_path / "cache")
    flip_a_byte(entry / "train.bin")

    result = run_train(tmp_path, "data.source=files", f"data.train_files=[{corpus}]")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = warning_lines(result.stderr)
    assert line.startswith(f"warning: token cache entry {entry} is damaged (train.bin does not match")
    assert (tmp_path / "runs" / "tiny" / "version_0" / "metrics.json").is_file()


# ----------------------------------------------------------------------------- unusable cache folders


def plant_file(tmp: Path) -> Path:
    write_corpus(tmp, "afile", "not a folder\n")
    return tmp / "afile"


def plant_unwritable(tmp: Path) -> Path:
    """A folder this process cannot create anything in: read-only permissions, or (for root, whom
    permissions do not stop) a link to /sys."""
    folder = tmp / "ro"
    if os.geteuid() == 0:
        folder.symlink_to("/sys")
    else:
        folder.mkdir()
        folder.chmod(0o500)
    return folder


UNUSABLE = {
    "cache_dir is a file": (lambda tmp: plant_file(tmp), "it is a file"),
    "cache_dir under a file": (lambda tmp: plant_file(tmp) / "cache", "it would be under the file"),
    "cache_dir read-only": (lambda tmp: plant_unwritable(tmp), "cannot write in"),
    "cache_dir below a read-only folder": (lambda tmp: plant_unwritable(tmp) / "cache", "cannot write in"),
}


@pytest.mark.parametrize("case", UNUSABLE, ids=list(UNUSABLE))
def test_unusable_cache_dir_falls_back_to_a_temporary_cache(tmp_path, capsys, case):
    corpus = write_corpus(tmp_path / "data")
    expected = tokens_of(prepared(files_config(tmp_path / "good", corpus)))
    plant, why = UNUSABLE[case]
    configured = plant(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()

    dm = TextDataModule(files_config(configured, corpus))
    dm.prepare_data()
    dm.prepare_data()  # as Trainer.fit calls it again: the same temporary cache, no second warning
    dm.setup("fit")
    assert tokens_of(dm) == expected
    (line,) = warning_lines(capsys.readouterr().err)
    assert line.startswith(f"warning: data cache {configured} is unusable (") and why in line, line
    assert f"using the temporary cache {dm.cache_dir} for this run" in line
    assert dm.token_splits["train"].path.is_relative_to(dm.cache_dir)
    assert Path(tempfile.gettempdir()) in dm.cache_dir.parents
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created next to the mistake
    if configured.name == "afile":
        assert configured.read_text() == "not a folder\n"


def test_cache_from_the_environment_that_is_a_file_falls_back(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MOE_LAB_CACHE", str(plant_file(tmp_path)))
    dm = prepared(files_config("", write_corpus(tmp_path / "data")))
    (line,) = warning_lines(capsys.readouterr().err)
    assert line.startswith(f"warning: data cache {tmp_path / 'afile' / 'data'} is unusable (it would be under")
    assert dm.cache_dir != tmp_path / "afile" / "data"


def test_unusable_cache_without_a_temporary_folder_is_one_error(tmp_path, monkeypatch):
    afile = plant_file(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(afile))  # no temporary folder can be made either
    with pytest.raises(DataError) as info:
        prepared(files_config(afile, write_corpus(tmp_path / "data")))
    message = str(info.value)
    assert message.startswith(f"data cache {afile} is unusable (it is a file), and no temporary folder")
    assert "\n" not in message


@pytest.mark.slow  # end to end through the CLI; the fallback itself is tested above for every case
def test_training_cli_with_a_cache_dir_that_is_a_file_warns_and_trains(tmp_path):
    corpus = write_corpus(tmp_path)
    afile = plant_file(tmp_path)
    result = run_train(tmp_path, "data.source=files", f"data.train_files=[{corpus}]", f"data.cache_dir={afile}")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = warning_lines(result.stderr)
    assert line.startswith(f"warning: data cache {afile} is unusable (it is a file); using the temporary cache")
    assert (tmp_path / "runs" / "tiny" / "version_0" / "metrics.json").is_file()
    assert afile.read_text() == "not a folder\n"


# ------------------------------------------------------------------------ data paths that are not text


def refused(cfg: DataConfig) -> str:
    with pytest.raises(DataError) as info:
        prepared(cfg)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_directory_given_as_a_data_file_is_named(tmp_path):
    folder = tmp_path / "texts"
    write_corpus(folder)
    message = refused(files_config(tmp_path / "cache", folder))
    assert message.startswith(f"data.train_files: {folder} is a directory, not a text file")
    # A glob that also matches a folder: the folder is named, not parsed.
    (folder / "sub.txt").mkdir()
    message = refused(files_config(tmp_path / "cache", folder / "*.txt"))
    assert message.startswith(f"data.train_files: {folder / 'sub.txt'} is a directory, not a text file")


def test_a_fifo_given_as_a_data_file_is_named_without_reading_it(tmp_path):
    """Opening a FIFO for reading would wait for a writer forever: it must be refused by stat alone."""
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    good = write_corpus(tmp_path)
    assert refused(files_config(tmp_path / "cache", fifo)) == f"data.train_files: {fifo} is a FIFO, not a regular file"
    message = refused(files_config(tmp_path / "cache", good, val_files=[str(fifo)]))
    assert message == f"data.val_files: {fifo} is a FIFO, not a regular file"
    message = refused(files_config(tmp_path / "cache", tmp_path / "*.txt"))  # found by a glob
    assert message == f"data.train_files: {fifo} is a FIFO, not a regular file"


def test_a_device_given_as_a_data_file_is_named_without_reading_it(tmp_path):
    if not stat.S_ISCHR(os.stat("/dev/zero").st_mode):
        pytest.skip("no /dev/zero character device here")
    message = refused(files_config(tmp_path / "cache", Path("/dev/zero"), format="text"))
    assert message == "data.train_files: /dev/zero is a character device, not a regular file"


@pytest.mark.parametrize(
    "name, content, offset",
    [
        ("binary.txt", b"plain text\n" * 10 + b"\x7fELF\x02\x01\x01\x00\x00rest", 117),
        ("rows.jsonl", b'{"text": "a row"}\n' * 5 + b'{"text": "a\x00b"}\n', 101),
        ("utf16.txt", "text in UTF-16\n".encode("utf-16-le") * 10, 1),
    ],
)
def test_a_file_with_nul_bytes_is_refused_as_binary(tmp_path, name, content, offset):
    path = write_corpus(tmp_path, name, content)
    message = refused(files_config(tmp_path / "cache", path))
    assert message == f"data.train_files: {path} holds binary data (a NUL byte at offset {offset}); expected UTF-8 text"


def test_a_compressed_text_file_is_not_taken_for_binary(tmp_path):
    path = write_corpus(tmp_path, "corpus.txt.gz", gzip.compress(TEXT.encode()))
    plain = write_corpus(tmp_path, "plain.txt")
    compressed = tokens_of(prepared(files_config(tmp_path / "cache", path)))
    assert compressed == tokens_of(prepared(files_config(tmp_path / "cache2", plain)))


@pytest.mark.parametrize("blank", ["", " \n\t\r\n  \n" * 50], ids=["empty", "whitespace only"])
def test_a_file_without_text_is_refused(tmp_path, blank):
    good = write_corpus(tmp_path)
    empty = write_corpus(tmp_path, "blank.txt", blank)
    for cfg, key in [
        (files_config(tmp_path / "cache", empty), "data.train_files"),
        (files_config(tmp_path / "cache", good, empty), "data.train_files"),  # one of several
        (files_config(tmp_path / "cache", good, val_files=[str(empty)]), "data.val_files"),
    ]:
        assert refused(cfg) == f"{key}: no text in {empty} (empty or whitespace only)"
    assert not (tmp_path / "cache").exists()  # nothing cached for a refused corpus


def test_a_jsonl_file_whose_rows_hold_only_whitespace_is_refused(tmp_path):
    path = write_corpus(tmp_path, "rows.jsonl", '{"text": "  \\n"}\n' * 40)
    assert (
        refused(files_config(tmp_path / "cache", path))
        == f"data.train_files: no text in {path} (empty or whitespace only)"
    )


def test_training_cli_refuses_bad_data_files_in_one_line(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    binary = write_corpus(tmp_path, "data.txt", b"text\n" * 50 + b"\x00\x01\x02")
    for path, start in [
        (folder, f"data.train_files: {folder} is a directory, not a text file"),
        (binary, f"data.train_files: {binary} holds binary data (a NUL byte at offset 250); expected UTF-8 text"),
    ]:
        assert_one_error_line(run_train(tmp_path, "data.source=files", f"data.train_files=[{path}]"), start)
        assert not (tmp_path / "runs" / "tiny").exists()  # refused before any run directory exists
