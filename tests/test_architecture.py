"""The layering of docs/architecture.md, read from the source (no module is imported): imports point down the
layers, no task module imports another, ``train/`` defines no task, the engine is constructed in one place, and
every schema lives beside its task. A change that breaks a rule names the file and the import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC / "leancnn"

# the modules every layer may use: they import nothing of ours but each other
UTIL = {"leancnn.errors", "leancnn.io", "leancnn.outputs", "leancnn.report", "leancnn.threads", "leancnn.loadspec",
        "leancnn.interrupts", "leancnn.config"}
# what each layer may import besides itself and UTIL (a prefix: the package and its modules)
ALLOWED = {
    "leancnn.nn": set(),
    "leancnn.models": {"leancnn.nn"},
    "leancnn.losses": {"leancnn.nn"},
    "leancnn.data": {"leancnn.nn"},
    "leancnn.train": {"leancnn.nn"},
    "leancnn.export": {"leancnn.nn", "leancnn.models"},
    "leancnn.prune": {"leancnn.nn", "leancnn.models"},
    "leancnn.latency": {"leancnn.nn", "leancnn.models", "leancnn.train", "leancnn.export", "leancnn"},
    "leancnn.search": {"leancnn.nn", "leancnn.models", "leancnn.prune"},
}
# each a command's task
TASK_MODULES = {"classify", "video", "register", "prune", "lodo", "latency", "search", "retrieve", "rl", "deploy"}
SHARED_TASK_MODULES = {"protocol", "lifecycle", "runs", "classification", "digits", "semi", "catalog", "pruning"}


def _module(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    p = SRC / name.replace(".", "/")
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``leancnn`` module ``path`` imports (function-level imports included), with its line."""
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("leancnn"):
                continue
            for alias in node.names:  # ``from . import report`` imports the module leancnn.report
                sub = f"{target}.{alias.name}"
                out.append((node.lineno, sub if _is_module(sub) else target))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("leancnn")]
    return out


SOURCES = sorted(ROOT.rglob("*.py"))


def _layer(mod: str) -> str | None:
    for layer in ALLOWED:
        if mod == layer or mod.startswith(layer + "."):
            return layer
    return None


def _under(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


def test_the_source_tree_is_read():
    assert len(SOURCES) > 60 and any(p.name == "engine.py" for p in SOURCES)
    imports = dict((_module(p), _imports(p)) for p in SOURCES)
    # the reader resolves relative and function-level imports: a few edges known to exist
    assert ("leancnn.nn.warp" in {m for _, m in imports["leancnn.losses.registration"]})
    assert ("leancnn.tasks.protocol" in {m for _, m in imports["leancnn.tasks.lifecycle"]})


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_layers(path):
    mod = _module(path)
    layer = "leancnn.config" if mod == "leancnn.config" else _layer(mod)
    wrong = []
    for line, target in _imports(path):
        if mod in UTIL:
            ok = target in UTIL
        elif layer is None:  # tasks, cli, demo and the package itself sit on top
            ok = True
        else:
            ok = (_under(target, layer) or target in UTIL
                  or any(_under(target, a) if a != "leancnn" else target == "leancnn" for a in ALLOWED[layer]))
        if not ok:
            wrong.append(f"{path.relative_to(SRC)}:{line} imports {target}")
    assert not wrong, "imports running up the layers (docs/architecture.md):\n" + "\n".join(wrong)


@pytest.mark.parametrize("name", sorted(TASK_MODULES))
def test_no_task_module_imports_another(name):
    path = ROOT / "tasks" / f"{name}.py"
    others = {f"leancnn.tasks.{t}" for t in TASK_MODULES - {name}}
    wrong = [f"line {line}: {target}" for line, target in _imports(path) if target in others]
    assert not wrong, f"tasks/{name}.py imports another task module: {wrong}"
    assert {p.stem for p in (ROOT / "tasks").glob("*.py")} - {"__init__"} == TASK_MODULES | SHARED_TASK_MODULES, \
        "a new module in tasks/: add it to TASK_MODULES or SHARED_TASK_MODULES here and in docs/architecture.md"


def _classes(path: Path) -> list[ast.ClassDef]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)]


def test_train_defines_no_task_and_the_engine_is_built_in_one_place():
    train = sorted((ROOT / "train").glob("*.py"))
    subclasses = [f"{p.name}: {c.name}" for p in train for c in _classes(p)
                  if any(isinstance(b, ast.Name) and b.id == "Task" or isinstance(b, ast.Attribute) and b.attr == "Task"
                         for b in c.bases)]
    assert not subclasses, f"train/ defines tasks: {subclasses}"
    calls = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in SOURCES for n in ast.walk(ast.parse(p.read_text()))
             if isinstance(n, ast.Call) and (getattr(n.func, "id", None) == "Trainer"
                                             or getattr(n.func, "attr", None) == "Trainer")]
    assert [c.split(":")[0] for c in calls] == ["tasks/lifecycle.py"], f"Trainer( outside the lifecycle: {calls}"
    # and only with keyword arguments
    call = next(n for n in ast.walk(ast.parse((ROOT / "tasks" / "lifecycle.py").read_text()))
                if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Trainer")
    assert not call.args and len(call.keywords) >= 5


def test_every_schema_lives_beside_its_task():
    config = {c.name for c in _classes(ROOT / "config.py")}
    assert {"OptimConfig", "ScheduleConfig", "TrainConfig", "ExperimentConfig"} <= config
    assert not any(c.startswith(("Video", "Register", "Prune", "Latency")) for c in config), sorted(config)
    for path, name in [("tasks/video.py", "VideoConfig"), ("tasks/register.py", "RegisterConfig"),
                       ("tasks/prune.py", "PruneConfig"), ("latency/config.py", "LatencyConfig")]:
        assert name in {c.name for c in _classes(ROOT / path)}, f"{name} not in {path}"
