import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny decode steps on a shared machine: one thread is much faster than two fighting for the cores.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
