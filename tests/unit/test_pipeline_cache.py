"""The local workspace's loaded pipeline is kept in a cache named by its YAML files: the same files
are not loaded (and validated) again, and any change to them is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autoretrain.adapters.localworkspace.pipeline import _from_json, _to_json, cache_folder, load_pipeline
from autoretrain.domain.errors import WorkspaceError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ml(tmp_path: Path) -> Path:
    """A copy of ml/ (and the one project file its components include), free to change."""
    shutil.copytree(ROOT / "ml", tmp_path / "ml", ignore=shutil.ignore_patterns("__pycache__", "sample"))
    (tmp_path / "autoretrain").mkdir()
    shutil.copy2(ROOT / "autoretrain" / "datacontract.py", tmp_path / "autoretrain" / "datacontract.py")
    return tmp_path / "ml"


def test_a_cached_pipeline_is_the_loaded_one(ml: Path, tmp_path: Path) -> None:
    loaded = load_pipeline(ml / "pipeline.yml")
    assert _from_json(json.loads(json.dumps(_to_json(loaded)))) == loaded
    assert [s.name for s in loaded.steps] == ["prep", "train", "evaluate"]


def test_the_same_files_are_read_from_the_cache_and_a_changed_file_is_loaded_again(ml: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load_pipeline(ml / "pipeline.yml", cache=cache)
    [entry] = cache.glob("*.json")
    # Proof that the second load reads the entry: a mark put into it comes back.
    marked = json.loads(entry.read_text())
    marked["experiment"] = "read-from-the-cache"
    entry.write_text(json.dumps(marked))

    assert load_pipeline(ml / "pipeline.yml", cache=cache).experiment == "read-from-the-cache"

    component = ml / "components" / "train.yml"
    component.write_text(component.read_text().replace("display_name: Train", "display_name: Train v2"))
    again = load_pipeline(ml / "pipeline.yml", cache=cache)
    assert again == first  # loaded again (the display name is not part of a step)
    assert len(list(cache.glob("*.json"))) == 2


def test_a_pipeline_that_does_not_load_is_never_cached(ml: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    pipeline = ml / "pipeline.yml"
    pipeline.write_text(pipeline.read_text().replace("component: ./components/train.yml",
                                                     "component: ./components/missing.yml"))
    for _ in range(2):
        with pytest.raises(WorkspaceError, match="azure-ai-ml cannot load it"):
            load_pipeline(pipeline, cache=cache)
    assert not cache.exists() or not list(cache.glob("*.json"))


def test_an_unreadable_entry_is_loaded_again_and_replaced(ml: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load_pipeline(ml / "pipeline.yml", cache=cache)
    [entry] = cache.glob("*.json")
    entry.write_text('{"path": "half a fi')

    assert load_pipeline(ml / "pipeline.yml", cache=cache) == first
    assert _from_json(json.loads(entry.read_text())) == first


def test_the_cache_can_be_turned_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("AUTORETRAIN_PIPELINE_CACHE", raising=False)
    assert cache_folder() == tmp_path / "autoretrain" / "pipelines"
    monkeypatch.setenv("AUTORETRAIN_PIPELINE_CACHE", "off")
    assert cache_folder() is None
