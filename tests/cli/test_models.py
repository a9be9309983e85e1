"""``streamcast models list | show | promote | rollback``, run in-process on registries of
fake versions (no backend): what they print, their ``--json`` objects, their errors."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from streamcast.cli import main
from streamcast.learn.lease import RegistryLease
from streamcast.learn.registry import ModelRegistry

from ..learn.fake_versions import add_version, corrupt

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """``main(["models", *args])`` -> (exit code, stdout, stderr), no STREAMCAST_ variables."""
    for name in list(os.environ):
        if name.startswith("STREAMCAST_"):
            monkeypatch.delenv(name)

    def run(*args: object) -> tuple[int, str, str]:
        code = main(["models", *(str(a) for a in args)])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def reg(tmp_path: Path) -> Path:
    """Versions 1..4 copied in by hand (no pointer yet)."""
    path = tmp_path / "reg"
    for v in range(1, 5):
        add_version(path, v)
    return path


def _rows(out: str) -> dict[int, str]:
    """Each version's line of ``models list``, by version."""
    rows = {}
    for line in out.splitlines()[1:]:
        parts = line[1:].split()
        if parts and parts[0].isdigit():
            rows[int(parts[0])] = line
    return rows


def test_models_alone_lists_the_versions_and_marks_the_current_one(run: Run, reg: Path) -> None:
    code, out, err = run("--registry", reg)
    assert (code, err) == (0, "")
    assert sorted(_rows(out)) == [1, 2, 3, 4]
    assert not any(line.startswith("*") for line in _rows(out).values())
    assert "no current pointer: daemons serve the newest usable version" in out

    ModelRegistry(reg).promote(2)
    for argv in (("--registry", reg), ("list", "--registry", reg), ("--registry", reg, "list")):
        code, out, err = run(*argv)
        assert (code, err) == (0, "")
        rows = _rows(out)
        assert [v for v, line in rows.items() if line.startswith("*")] == [2]
        assert "2024-05-01T12:00:00+00:00" in rows[2]
        assert "* current: version 2 (rollback goes to 4)" in out


def test_list_json_is_one_object(run: Run, reg: Path) -> None:
    registry = ModelRegistry(reg)
    registry.promote(1)
    registry.promote(3)
    (registry.version_path(4) / "meta.json").unlink()  # a copy in progress
    code, out, err = run("list", "--json", "--registry", reg)
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["current"] == 3
    assert data["previous"] == [1, 4]
    assert data["lease"] is None
    assert [(r["version"], r["current"]) for r in data["versions"]] == [
        (1, False),
        (2, False),
        (3, True),
        (4, False),
    ]
    assert data["versions"][0]["horizon"] == 4
    assert "has no meta.json (copy incomplete?)" in data["versions"][3]["error"]


def test_list_shows_who_holds_the_lease(run: Run, reg: Path) -> None:
    lease = RegistryLease(reg, "online-trainer", ttl_s=60)
    assert lease.acquire()
    code, out, _ = run("--registry", reg)
    assert code == 0
    assert f"lease: held by online-trainer on {os.uname().nodename}" in out
    code, out, _ = run("--json", "--registry", reg)
    assert json.loads(out)["lease"]["holder"] == "online-trainer"


def test_empty_registry(run: Run, tmp_path: Path) -> None:
    code, out, err = run("--registry", tmp_path / "none")
    assert (code, err) == (0, "")
    assert out.startswith("no model versions in")
    code, out, _ = run("--json", "--registry", tmp_path / "none")
    assert json.loads(out)["versions"] == []


def test_show_prints_meta_json(run: Run, reg: Path) -> None:
    ModelRegistry(reg).promote(3)
    code, out, err = run("show", "3", "--registry", reg)
    assert (code, err) == (0, "")
    head, check, body = out.split("\n", 2)
    assert head == f"model version 3 (current): {reg / 'v000003'}"
    assert check == "check: ok"
    assert json.loads(body) == json.loads((reg / "v000003" / "meta.json").read_text())
    corrupt(reg, 2)
    code, out, err = run("show", "v000002", "--json", "--registry", reg)
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert (data["version"], data["current"]) == (2, False)
    assert data["meta"]["version"] == 2
    assert "checksum mismatch" in data["check"]


def test_promote_prints_what_changed(run: Run, reg: Path) -> None:
    code, out, err = run("promote", "2", "--registry", reg)
    assert (code, err) == (0, "")
    assert out == "current: model version 2 (was 4)\n"
    assert ModelRegistry(reg).current() == 2
    code, out, err = run("promote", "v3", "--json", "--registry", reg)
    assert (code, err) == (0, "")
    assert json.loads(out) == {"action": "promote", "current": 3, "previous": 2, "removed": []}
    code, out, _ = run("promote", "3", "--registry", reg)
    assert (code, out) == (0, "model version 3 is already current\n")


def test_promote_applies_retention_from_the_config(run: Run, reg: Path, tmp_path: Path) -> None:
    config = tmp_path / "streamcast.yaml"
    config.write_text(f"registry:\n  path: {reg}\n  keep: 2\n")
    code, out, err = run("promote", "4", "--config", config)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "current: model version 4 (was 3)",
        "retention removed versions 1, 2",
    ]
    assert ModelRegistry(reg).versions() == [3, 4]


def test_rollback_prints_what_changed(run: Run, reg: Path) -> None:
    registry = ModelRegistry(reg)
    for v in (1, 3, 4):
        registry.promote(v)
    code, out, err = run("rollback", "--registry", reg)
    assert (code, err) == (0, "")
    assert out == "current: model version 3 (rolled back from 4)\n"
    code, out, err = run("rollback", "--json", "--registry", reg)
    assert (code, err) == (0, "")
    assert json.loads(out) == {"action": "rollback", "current": 1, "previous": 3}
    assert registry.current() == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["promote", "2"], "streamcast models promote: model version 2: checksum mismatch"),
        (["promote", "9"], "streamcast models promote: no model version 9 in"),
        (["promote", "two"], "streamcast models promote: not a model version: 'two'"),
        (["show", "9"], "streamcast models show: no model version 9 in"),
        (["rollback"], "streamcast models rollback: model registry"),
    ],
    ids=["corrupt", "missing", "not-a-number", "show-missing", "no-pointer"],
)
def test_errors_are_one_line_and_exit_1(run: Run, reg: Path, argv: list[str], message: str) -> None:
    corrupt(reg, 2)
    code, out, err = run(*argv, "--registry", reg)
    assert code == 1
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith(message), err
    assert ModelRegistry(reg).current() is None  # nothing changed


def test_a_bad_registry_setting_is_one_line_and_exit_1(
    run: Run, reg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMCAST_REGISTRY__KEEP", "1")
    code, out, err = run("promote", "2", "--registry", reg)
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1
    assert "registry.keep (env STREAMCAST_REGISTRY__KEEP)" in err
