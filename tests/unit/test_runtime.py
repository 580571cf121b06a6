"""The worker's dependencies, built once at the first event (`bootstrap.runtime`)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from autoretrain import bootstrap


@pytest.fixture
def unbuilt(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """runtime() with nothing built yet, and a bootstrap that records whether the collector ran."""
    seen: list[bool] = []

    def build(*_: Any, **__: Any) -> object:
        seen.append(gc.isenabled())
        if len(seen) == 1:
            raise RuntimeError("the storage account is not there")
        return object()

    monkeypatch.setattr(bootstrap, "_runtime", None)
    monkeypatch.setattr(bootstrap, "_runtime_settings", bootstrap.Settings())
    monkeypatch.setattr(bootstrap, "bootstrap", build)
    yield seen
    gc.enable()


def test_the_libraries_load_with_the_collector_off_and_it_runs_again_after(unbuilt: list[bool]) -> None:
    """The first event builds the adapters with the cyclic collector off (their imports only grow
    the heap); after, built or failed, the collector is on again, and the next event builds again
    only if the first failed."""
    with pytest.raises(RuntimeError):
        bootstrap.runtime()
    assert gc.isenabled()

    first = bootstrap.runtime()
    assert bootstrap.runtime() is first
    assert unbuilt == [False, False] and gc.isenabled()
