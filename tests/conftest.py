"""Test isolation.

- The user's home is never written: every cache and config location moe_lab or a library it drives
  would use (moe_lab's data cache and step-time cache, wandb, matplotlib, Hugging Face) points into a
  temporary home for the whole session, subprocesses included; at the end the session fails if the
  real home's caches changed (`pytest_sessionfinish`).
- Process-wide torch settings that a training run changes (Lightning's deterministic mode, thread count):
  each test starts from the settings the session started with.
"""

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from moe_lab.cli import tune_cpu_allocator

REAL_HOME = Path.home()
# What moe_lab and its libraries write under a home: checked unchanged at the end of the session.
HOME_CACHES = (".cache/moe_lab", ".cache/wandb", ".config/wandb", ".cache/huggingface", ".config/matplotlib")
TEST_HOME = Path(tempfile.mkdtemp(prefix="moe_lab_test_home_"))
os.environ.update(
    {
        "HOME": str(TEST_HOME),
        "XDG_CACHE_HOME": str(TEST_HOME / ".cache"),
        "XDG_CONFIG_HOME": str(TEST_HOME / ".config"),
        "MOE_LAB_CACHE": str(TEST_HOME / ".cache" / "moe_lab"),
        "WANDB_DIR": str(TEST_HOME / "wandb"),
        "WANDB_CACHE_DIR": str(TEST_HOME / ".cache" / "wandb"),
        "WANDB_CONFIG_DIR": str(TEST_HOME / ".config" / "wandb"),
        "WANDB_DATA_DIR": str(TEST_HOME / ".local" / "share" / "wandb"),
        "MPLCONFIGDIR": str(TEST_HOME / ".config" / "matplotlib"),
        "HF_HOME": str(TEST_HOME / ".cache" / "huggingface"),
    }
)


def home_caches_digest(home: Path) -> dict[str, str]:
    """Every file under the home's cache folders -> a hash of its bytes."""
    digest = {}
    for rel in HOME_CACHES:
        for path in sorted((home / rel).rglob("*")):
            if path.is_file() and not path.is_symlink():
                digest[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


_HOME_BEFORE = home_caches_digest(REAL_HOME)


def pytest_sessionfinish(session, exitstatus):
    changed = sorted(set(home_caches_digest(REAL_HOME).items()) ^ set(_HOME_BEFORE.items()))
    shutil.rmtree(TEST_HOME, ignore_errors=True)
    if changed:
        names = sorted({path for path, _ in changed})
        print(f"\nthe tests changed the user's caches in {REAL_HOME}: {names[:10]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


tune_cpu_allocator()  # as every entry point does: the tests train in this process
_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def restore_torch_globals():
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(_THREADS)


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    """One token cache for the whole session: the corpus is tokenised once."""
    return tmp_path_factory.mktemp("data_cache")
