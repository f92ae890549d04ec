"""core/threads.py: torch on one intra-op thread inside light_work, the calling thread's count
restored after, also when blocks nest, raise, or run in a worker thread."""
import threading

import pytest
import torch

from drseg.core.threads import light_work


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_one_thread_inside_restored_after_nesting_and_errors(two_threads):
    with light_work():
        assert torch.get_num_threads() == 1
        with light_work():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError):
        with light_work():
            raise ValueError("stop")
    assert torch.get_num_threads() == 2


def test_in_a_worker_thread(two_threads):
    seen = []

    def work():
        torch.set_num_threads(2)
        with light_work():
            seen.append(torch.get_num_threads())
            seen.append(float(torch.ones(64, 64).sum()))       # torch works on one thread
        seen.append(torch.get_num_threads())

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(10)
    assert seen == [1, 4096.0, 2]
    assert torch.get_num_threads() == 2
