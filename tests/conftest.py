"""Shared test setup: one torch thread for tiny-model tests (their ops are too small to gain from more, and
oversubscribed threads slow them 100x on a busy 2-core machine); `slow` tests on SmolLM2 keep the default."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _threads(request):
    n = torch.get_num_threads()
    if request.node.get_closest_marker("slow") is None:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
