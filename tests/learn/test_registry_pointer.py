"""The registry's ``current`` pointer: promotion, rollback, the start-up fallback order and
retention. Versions are fake archives (``fake_versions``): no backend is loaded."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from streamcast.config import Settings
from streamcast.errors import RegistryError
from streamcast.learn import registry as registry_module
from streamcast.learn.archive import MODEL_FILE, IncompleteVersionError
from streamcast.learn.pointer import HISTORY, POINTER_FILE, Pointer, serving_order
from streamcast.learn.registry import ModelRegistry

from .fake_versions import CFG, FakeModel, add_version, corrupt


def _registry(tmp_path: Path, versions: int, keep: int = 10) -> ModelRegistry:
    """Versions 1..``versions`` copied in by hand: no pointer yet."""
    for v in range(1, versions + 1):
        add_version(tmp_path / "reg", v)
    return ModelRegistry(tmp_path / "reg", keep=keep)


def _pointer_file(reg: ModelRegistry) -> dict[str, object]:
    data = json.loads((reg.path / POINTER_FILE).read_text())
    assert isinstance(data, dict)
    return data


# -- the pointer -------------------------------------------------------------------------


def test_save_points_current_at_the_new_version_unless_told_not_to(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    assert reg.current() is None and reg.pointer() is None
    assert reg.save(FakeModel(), CFG) == 1
    assert reg.current() == 1
    assert reg.save(FakeModel(), CFG, promote=False) == 2
    assert reg.current() == 1  # saved, not served
    promoted = reg.promote(2)
    assert (promoted.current, promoted.previous, promoted.removed) == (2, 1, ())
    assert reg.current() == 2
    data = _pointer_file(reg)
    assert data["current"] == 2 and data["previous"] == [1]
    assert data["action"] == "promote"
    assert str(os.getpid()) in str(data["by"])
    # Readable by a daemon running as another user.
    assert (reg.path / POINTER_FILE).stat().st_mode & 0o777 == 0o644


def test_pointer_is_replaced_in_one_rename_and_a_failed_write_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = _registry(tmp_path, 2)
    reg.promote(1)
    before = (reg.path / POINTER_FILE).read_bytes()
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def crash(src: str, dst: str) -> None:
        replaced.append((os.path.basename(src), os.path.basename(dst)))
        raise OSError("disk full")

    monkeypatch.setattr(registry_module.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        reg.promote(2)
    # Written beside, then renamed over: the old pointer is untouched, no temp file left.
    assert len(replaced) == 1 and replaced[0][1] == POINTER_FILE
    assert replaced[0][0].startswith(".tmp-")
    assert (reg.path / POINTER_FILE).read_bytes() == before
    assert [p.name for p in reg.path.iterdir() if p.name.startswith(".tmp-")] == []
    monkeypatch.setattr(registry_module.os, "replace", real_replace)
    reg.promote(2)
    assert reg.current() == 2


def test_readers_never_see_half_a_pointer(tmp_path: Path) -> None:
    reg = _registry(tmp_path, 2)
    reg.promote(1)
    seen: set[int] = set()
    errors: list[Exception] = []
    done = threading.Event()

    def read() -> None:
        reader = ModelRegistry(reg.path)
        while not done.is_set():
            try:
                current = reader.current()
            except Exception as exc:  # a half-written pointer would land here
                errors.append(exc)
                return
            assert current is not None
            seen.add(current)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for i in range(150):
            reg.promote(2 if i % 2 == 0 else 1)
    finally:
        done.set()
        thread.join()
    assert errors == []
    assert seen <= {1, 2}


def test_a_pointer_streamcast_did_not_write_is_named(tmp_path: Path) -> None:
    reg = _registry(tmp_path, 1)
    for text in (
        "{not json",
        '{"previous": []}',
        '{"current": 2, "previous": "1"}',
        '{"current": "7"}',
        '{"current": 0}',
        "[1]",
    ):
        (reg.path / POINTER_FILE).write_text(text)
        with pytest.raises(RegistryError, match=r"registry pointer .*current\.json is not valid"):
            reg.current()


# -- promote -----------------------------------------------------------------------------


def test_promote_refuses_a_version_that_would_not_load_naming_why(tmp_path: Path) -> None:
    reg = _registry(tmp_path, 4)
    reg.promote(1)
    corrupt(reg.path, 2)
    with pytest.raises(RegistryError, match="model version 2: checksum mismatch"):
        reg.promote(2)
    (reg.version_path(3) / MODEL_FILE).unlink()
    with pytest.raises(IncompleteVersionError, match=r"version 3 has no model.keras"):
        reg.promote(3)
    data = (reg.version_path(4) / MODEL_FILE).read_bytes()
    (reg.version_path(4) / MODEL_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(RegistryError, match="truncated"):
        reg.promote(4)
    with pytest.raises(RegistryError, match="no model version 9"):
        reg.promote(9)
    assert reg.current() == 1
    assert _pointer_file(reg)["previous"] == [4]  # the first promotion, over the implicit 4


def test_first_promotion_in_a_registry_without_a_pointer_remembers_the_newest(
    tmp_path: Path,
) -> None:
    # Daemons served the newest version of a pointer-less registry: that is what a
    # rollback after the first promotion returns to.
    reg = _registry(tmp_path, 3)
    done = reg.promote(2)
    assert (done.current, done.previous) == (2, 3)
    assert reg.rollback() == 3


def test_promoting_the_current_version_changes_nothing(tmp_path: Path) -> None:
    reg = _registry(tmp_path, 2)
    reg.promote(1)
    reg.promote(2)
    before = _pointer_file(reg)
    done = reg.promote(2)
    assert (done.current, done.previous) == (2, 2)
    assert _pointer_file(reg) == before


# -- rollback ----------------------------------------------------------------------------


def test_rollback_returns_to_the_version_served_before_not_the_one_numbered_below(
    tmp_path: Path,
) -> None:
    reg = _registry(tmp_path, 5)
    for v in (1, 3, 5):
        reg.promote(v)
    assert _pointer_file(reg)["previous"] == [3, 1]
    assert reg.rollback() == 3  # not 4: version 4 was never served
    assert _pointer_file(reg)["action"] == "rollback"
    assert _pointer_file(reg)["previous"] == [1]
    assert reg.rollback() == 1
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback()
    assert reg.current() == 1


def test_rollback_undoes_a_promotion_of_an_older_version(tmp_path: Path) -> None:
    reg = _registry(tmp_path, 5)
    reg.promote(5)
    reg.promote(2)  # an operator goes back to 2 by hand
    assert reg.rollback() == 5


def test_rollback_skips_versions_that_no_longer_verify(tmp_path: Path) -> None:
    reg = _registry(tmp_path, 7)
    for v in (1, 3, 5, 7):
        reg.promote(v)
    corrupt(reg.path, 5)
    assert reg.rollback() == 3
    assert _pointer_file(reg)["previous"] == [1]  # the unusable 5 is dropped
    reg.promote(7)
    corrupt(reg.path, 3)
    corrupt(reg.path, 1)
    with pytest.raises(
        RegistryError, match=r"no version served before it is usable \(version 3: .*version 1: "
    ):
        reg.rollback()
    assert reg.current() == 7


def test_rollback_without_a_pointer_says_so(tmp_path: Path) -> None:
    reg = _registry(tmp_path, 2)
    with pytest.raises(RegistryError, match="no current version to roll back from"):
        reg.rollback()


def test_history_is_bounded(tmp_path: Path) -> None:
    reg = _registry(tmp_path, 12, keep=20)
    for v in range(1, 13):
        reg.promote(v)
    assert _pointer_file(reg)["previous"] == list(range(11, 11 - HISTORY, -1))
    small = ModelRegistry(reg.path, keep=3)
    small.promote(1)
    assert _pointer_file(reg)["previous"] == [12, 11]  # keep - 1


# -- the order a daemon tries versions in at start-up --------------------------------------


def test_serving_order_is_current_then_its_history_then_below_then_above() -> None:
    pointer = Pointer(current=7, previous=(5, 3))
    assert serving_order(pointer, range(1, 10)) == [7, 5, 3, 6, 4, 2, 1, 9, 8]


def test_serving_order_skips_history_entries_that_are_gone() -> None:
    pointer = Pointer(current=7, previous=(2, 5))
    assert serving_order(pointer, [3, 5, 7, 8]) == [7, 5, 3, 8]


def test_serving_order_without_a_pointer_is_newest_first() -> None:
    assert serving_order(None, [1, 3, 2]) == [3, 2, 1]


def test_serving_order_tries_a_current_version_that_is_gone_first() -> None:
    # Its load fails naming the missing directory; the daemon then goes on down the list.
    assert serving_order(Pointer(current=4, previous=(2,)), [1, 2, 3]) == [4, 2, 3, 1]


# -- retention ---------------------------------------------------------------------------


def test_retention_keeps_the_newest_versions_after_each_save(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg", keep=3)
    for _ in range(6):
        reg.save(FakeModel(), CFG)
    assert reg.versions() == [4, 5, 6]
    assert reg.current() == 6
    assert _pointer_file(reg)["previous"] == [5, 4]


def test_retention_never_removes_the_current_version_or_its_history(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg", keep=2)
    reg.save(FakeModel(), CFG)  # 1, current
    for _ in range(4):
        reg.save(FakeModel(), CFG, promote=False)  # 2..5, candidates never promoted
    assert reg.versions() == [1, 2, 3, 4, 5]  # saving without promoting removes nothing
    done = reg.promote(3)
    assert done.removed == (2,)
    assert reg.versions() == [1, 3, 4, 5]  # 1 is in the history, 3 current, 4 and 5 newest
    reg.promote(5)
    assert reg.versions() == [3, 4, 5]  # 1 fell out of the (keep - 1 long) history
    assert reg.rollback() == 3


def test_a_registry_without_a_pointer_is_not_pruned(tmp_path: Path) -> None:
    reg = _registry(tmp_path, 5, keep=2)
    assert reg.prune() == []
    assert reg.versions() == [1, 2, 3, 4, 5]


def test_a_version_is_renamed_out_of_sight_before_it_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = _registry(tmp_path, 4, keep=2)
    deleting: list[tuple[str, list[int]]] = []
    real_rmtree = registry_module.shutil.rmtree

    def watch(path: str | os.PathLike[str], **kwargs: object) -> None:
        # While a version is being deleted, readers no longer list it.
        deleting.append((Path(path).name, ModelRegistry(reg.path).versions()))
        real_rmtree(path, ignore_errors=True)

    monkeypatch.setattr(registry_module.shutil, "rmtree", watch)
    assert reg.promote(4).removed == (1, 2)
    assert [name.startswith(".tmp-removed-v00000") for name, _ in deleting] == [True, True]
    assert deleting[0][1] == [2, 3, 4] and deleting[1][1] == [3, 4]
    assert sorted(p.name for p in reg.path.iterdir()) == [POINTER_FILE, "v000003", "v000004"]


def test_keep_must_leave_a_version_to_roll_back_to(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep must be at least 2"):
        ModelRegistry(tmp_path, keep=1)
    assert Settings().registry.keep == 10
    with pytest.raises(ValueError, match="greater than or equal to 2"):
        Settings(registry={"keep": 1})
