"""Shared test setup: one torch thread for tiny-model tests (their ops are too small to gain from more, and
oversubscribed threads slow them 100x on a busy 2-core machine); `slow` tests on SmolLM2 keep the default."""

import os

import pytest
import torch

os.environ.setdefault("INNERPISSA_PRECISION", "fp32")  # `auto` = fp32 in tests, whatever the CPU's bf16 flags


@pytest.fixture(autouse=True, scope="session")
def _base_cache(tmp_path_factory):
    """Stored c = 0 rows go to a folder of this session's, not the user's cache."""
    old = os.environ.get("INNERPISSA_BASE_CACHE")
    os.environ["INNERPISSA_BASE_CACHE"] = str(tmp_path_factory.mktemp("base_rows"))
    yield
    if old is None:
        del os.environ["INNERPISSA_BASE_CACHE"]
    else:
        os.environ["INNERPISSA_BASE_CACHE"] = old


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One thread for the session, so module-scoped fixtures (fits on tiny models) get it too."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield n
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _threads(request, _one_thread):
    """`slow` tests (the real SmolLM2) get the machine's default thread count back."""
    if request.node.get_closest_marker("slow") is not None:
        torch.set_num_threads(_one_thread)
    yield
    torch.set_num_threads(1)


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run `innerpissa ARGS...` in-process: returns (exit code, stdout, stderr)."""
    import sys

    from innerpissa.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["innerpissa", *args])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = int(e.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run
