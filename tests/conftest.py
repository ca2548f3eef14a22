"""Shared fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (small problems: OpenMP fork/join costs more than it gives,
    badly so on a loaded machine) and restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
