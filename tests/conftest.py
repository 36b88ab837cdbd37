"""Test isolation for process-wide torch settings that a training run changes (Lightning's
deterministic mode, thread count): each test starts from the settings the session started with."""

import pytest
import torch

from moe_lab.cli import tune_cpu_allocator

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
