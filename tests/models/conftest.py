import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models: one thread is as fast and does not thrash when the 2 cores are shared.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
