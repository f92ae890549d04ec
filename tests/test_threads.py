"""core/threads.py: torch on one intra-op thread inside light_work, the calling thread's count
restored after, also when blocks nest, raise, or run in a worker thread."""
import threading

import pytest
import torch

from drseg.core.threads import all_cores, light_work


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


def test_a_run_started_during_another_threads_block_gets_every_core_back(two_threads, monkeypatch):
    """torch hands a new thread the last count set: one started inside another thread's block
    begins on 1; all_cores() (what every run calls first) gives it the full count."""
    from drseg.core import threads

    monkeypatch.setattr(threads, "_full_count", None)    # as in a fresh process with 2 threads
    inside, release = threading.Event(), threading.Event()
    seen = {}

    def query():
        with light_work():
            inside.set()
            release.wait(10)

    def run():
        seen["inherited"] = torch.get_num_threads()
        all_cores()
        seen["after"] = torch.get_num_threads()

    first = threading.Thread(target=query)
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=run)
    second.start()
    second.join(10)
    release.set()
    first.join(10)
    assert seen == {"inherited": 1, "after": 2}
