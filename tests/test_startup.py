"""Start-up cost and noise: what does not need a model never imports TensorFlow, and
importing the model says one line about its device and nothing on stderr.

Each check runs in a fresh interpreter (``sys.executable``): the test process itself
has long imported TensorFlow for the model tests.
"""

from __future__ import annotations

import ast
import json
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import streamcast

PACKAGE = Path(streamcast.__file__).parent
ROOT = PACKAGE.parent
BACKENDS = ("tensorflow", "keras")
RUNTIME = PACKAGE / "model" / "runtime.py"


def _modules(package: str) -> list[str]:
    path = PACKAGE.joinpath(*package.split(".")[1:])
    return [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(path)])]


# What a daemon, the demo and the light commands import before any model is loaded.
MODEL_FREE = [
    *_modules("streamcast.stream"),
    *_modules("streamcast.ops"),
    *_modules("streamcast.sim"),
    *(f"streamcast.learn.{m}" for m in ("examples", "history", "job", "registry")),
    "streamcast.cli",
    "streamcast.config",
    "streamcast.errors",
    "streamcast.signals",
]


def _env() -> dict[str, str]:
    """The caller's environment without streamcast's settings or TensorFlow's log level
    (the runtime must quieten TensorFlow by itself)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STREAMCAST_") and k != "TF_CPP_MIN_LOG_LEVEL"
    }


def _python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


_IMPORT_EACH = """
import importlib, json, sys
backends = json.loads(sys.argv[1])
loaded = {}
for name in sys.argv[2:]:
    importlib.import_module(name)
    loaded[name] = [b for b in backends if b in sys.modules]
print(json.dumps(loaded))
"""


def test_model_free_modules_do_not_import_the_backend() -> None:
    assert {"streamcast.stream.daemon", "streamcast.stream.serving"} <= set(MODEL_FREE)
    assert {"streamcast.ops.logs", "streamcast.sim.demo", "streamcast.sim.broker"} <= set(
        MODEL_FREE
    )
    done = _python(_IMPORT_EACH, json.dumps(BACKENDS), *MODEL_FREE)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout)
    assert list(loaded) == MODEL_FREE
    # In import order, so the first module named is the one that pulled the backend in.
    offenders = {name: found for name, found in loaded.items() if found}
    assert not offenders, offenders


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["--help"], "usage: streamcast"),
        (["run", "--help"], "usage: streamcast run"),
        (["config", "show"], "bootstrap_servers:"),
        (["models", "--registry", "{tmp}"], "no model versions in"),
    ],
    ids=["help", "run-help", "config-show", "models-empty"],
)
def test_light_commands_run_without_the_backend(
    argv: list[str], expect: str, tmp_path: Path
) -> None:
    """``python -m streamcast ...`` run in-process, then ``sys.modules`` inspected."""
    argv = [a.replace("{tmp}", str(tmp_path / "registry")) for a in argv]
    code = (
        "import json, runpy, sys\n"
        "backends = json.loads(sys.argv[2])\n"
        "sys.argv = ['streamcast', *json.loads(sys.argv[1])]\n"
        "try:\n"
        "    runpy.run_module('streamcast', run_name='__main__', alter_sys=True)\n"
        "    exit_code = None\n"
        "except SystemExit as exc:\n"
        "    exit_code = exc.code\n"
        "loaded = [b for b in backends if b in sys.modules]\n"
        "print('\\n' + json.dumps({'exit': exit_code, 'loaded': loaded}))\n"
    )
    done = _python(code, json.dumps(argv), json.dumps(BACKENDS))
    assert done.returncode == 0, done.stderr[-3000:]
    output, _, last = done.stdout.rstrip("\n").rpartition("\n")
    result = json.loads(last)
    assert result == {"exit": 0, "loaded": []}, (result, done.stderr[-3000:])
    assert expect in output
    assert done.stderr == ""


_NOISE = re.compile(r"cuda|onednn|cpu_feature_guard|absl|tensorflow|warning", re.IGNORECASE)


def test_importing_the_model_writes_nothing_to_stderr() -> None:
    """TensorFlow's C++ start-up notes (CPU features, oneDNN, CUDA drivers, absl) are
    caught by the runtime, whatever TensorFlow's own log level."""
    for level in (None, "0"):
        code = "import os, sys\n"
        if level is not None:
            code += f"os.environ['TF_CPP_MIN_LOG_LEVEL'] = {level!r}\n"
        code += "import streamcast.model\nassert 'tensorflow' in sys.modules\n"
        done = _python(code)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stderr == "", (level, _NOISE.findall(done.stderr), done.stderr[-3000:])


def test_importing_the_model_logs_one_line_naming_the_device() -> None:
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr,\n"
        "                    format='%(name)s|%(levelname)s|%(message)s')\n"
        "import streamcast.model\n"
        "from streamcast.model.runtime import DEVICE\n"
        "print(DEVICE)\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr[-3000:]
    device = done.stdout.strip()
    assert re.fullmatch(r"(CPU|GPU|TPU):\d+", device), device
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines  # nothing else at INFO: the caught noise goes to DEBUG
    name, level, message = lines[0].split("|", 2)
    assert (name, level) == ("streamcast.model.runtime", "INFO")
    assert f" on {device} " in message, message
    assert re.fullmatch(r"\S+ \S+ on \S+ \(Keras \S+\)", message), message


# -- where the backend may be imported ---------------------------------------------------------


def _backend_imports(tree: ast.Module) -> list[tuple[int, str, bool]]:
    """(line, backend, inside a function) for each import of keras or tensorflow.

    ``if TYPE_CHECKING:`` blocks never run and are skipped.
    """
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(ast.Module(body=child.orelse, type_ignores=[]), in_function)
                continue
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                names = [child.module]
            for name in names:
                top = name.split(".")[0]
                if top in BACKENDS:
                    found.append((child.lineno, top, in_function))
            inner = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            visit(child, in_function or inner)

    visit(tree, False)
    return found


def _function_imports_allowed(path: Path) -> set[str]:
    rel = path.relative_to(PACKAGE).as_posix()
    if rel.startswith("model/") or rel == "learn/fit.py":
        return {"tensorflow"}
    return set()


def test_only_the_runtime_imports_keras_and_tensorflow() -> None:
    """Every other module takes Keras from ``streamcast.model.runtime``; TensorFlow itself
    is imported only inside functions of the model package and the fit loop."""
    files = sorted(PACKAGE.rglob("*.py"))
    assert RUNTIME in files and len(files) > 20
    wrong = []
    for path in files:
        if path == RUNTIME:
            continue
        for line, backend, in_function in _backend_imports(ast.parse(path.read_text(), str(path))):
            if not in_function or backend not in _function_imports_allowed(path):
                where = "in a function" if in_function else "at module level"
                wrong.append(f"{path.relative_to(ROOT)}:{line}: import {backend} {where}")
    assert not wrong, "\n".join(wrong)


def test_the_import_checker_sees_every_kind_of_import() -> None:
    """The checker above, on code that breaks each rule once."""
    tree = ast.parse(
        "import keras\n"
        "from tensorflow import keras as tfk\n"
        "import tensorflow.compat.v1\n"
        "from streamcast.model.runtime import keras\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import tensorflow\n"
        "try:\n"
        "    import keras.ops\n"
        "except ImportError:\n"
        "    pass\n"
        "class C:\n"
        "    import tensorflow\n"
        "    def f(self):\n"
        "        import tensorflow as tf\n"
        "def g():\n"
        "    def h():\n"
        "        from keras import layers\n"
    )
    assert _backend_imports(tree) == [
        (1, "keras", False),
        (2, "tensorflow", False),
        (3, "tensorflow", False),
        (9, "keras", False),
        (13, "tensorflow", False),
        (15, "tensorflow", True),
        (18, "keras", True),
    ]
