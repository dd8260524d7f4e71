"""The package's layers, checked statically: every import of every module (function bodies
included) is parsed with `ast`, and must follow the table below.

A unit is a subpackage of trainyard (`engine`, `hpo`, ...) or a top-level module
(`trainer`, `_logging`). Arrows only point down: a unit may import the units its row
names, and the private helper modules (`_logging`, `_trust`, `_yaml`), nothing else of trainyard.
Ray may be imported only by the Ray layer (`execution`) and, for Tune alone, by `hpo`;
Optuna only by `hpo`. README.md's layout section shows this same table (checked below).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "platform" / "trainyard"
HELPERS = ("_logging", "_trust", "_yaml")

# unit -> the units it may import, top layer first (each row names only rows below it).
LAYERS: dict[str, tuple[str, ...]] = {
    "compat": ("cli", "pipeline", "job_queue", "hpo", "experiment", "trainer", "execution", "export", "data", "models", "engine", "storage", "report"),
    "cli": ("pipeline", "job_queue", "hpo", "experiment", "trainer", "execution", "export", "data", "models", "engine", "storage", "report"),
    "pipeline": ("hpo", "experiment", "trainer", "execution", "export", "data", "engine", "storage", "report"),
    "job_queue": ("experiment", "trainer", "execution", "engine", "storage"),
    "hpo": ("experiment", "trainer", "execution", "data", "engine", "storage"),
    "experiment": ("trainer", "execution", "data", "models", "engine", "storage"),
    "trainer": ("execution", "export", "models", "engine", "storage"),
    "execution": ("export", "data", "models", "engine", "storage"),
    "export": ("data", "engine"),
    "data": ("engine",),
    "models": ("engine",),
    "engine": ("storage",),  # where data files are (local or in object storage)
    "report": ("storage",),  # report.html / report.md of any run, training or sweep directory (reads their files)
    "storage": (),  # where runs keep their outputs: local paths and URIs, told apart in one place
    "__init__": ("trainer", "engine"),  # trainyard/__init__.py: public names, loaded lazily
}
# third-party package -> {unit: the module prefixes it may import}
RESTRICTED = {
    "ray": {"execution": ("ray",), "hpo": ("ray.tune",)},
    "optuna": {"hpo": ("optuna",)},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(source: str, module: str) -> list[tuple[int, str, str | None]]:
    """(line, imported module, imported name or None) for every import in `source`."""
    is_package = (PACKAGE.parent / Path(*module.split("."))).is_dir()
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(node.lineno, base, alias.name) for alias in node.names]
    return found


def target_module(imported: str, name: str | None) -> str:
    """The trainyard module an import reaches: `from trainyard import _yaml` names a module."""
    if name:
        candidate = PACKAGE.parent / Path(*imported.split("."), name)
        if candidate.with_suffix(".py").exists() or candidate.is_dir():
            return f"{imported}.{name}"
    return imported


def violations(source: str, module: str) -> list[str]:
    """What in `source` (the text of `module`) breaks the layering rules."""
    unit = unit_of(module)
    problems = []
    for line, imported, name in imports(source, module):
        where = f"{module}:{line}"
        full = f"{imported}.{name}" if name else imported
        top = imported.split(".")[0]
        if top in RESTRICTED:
            allowed = RESTRICTED[top].get(unit, ())
            if not any(full == p or full.startswith(p + ".") for p in allowed):
                problems.append(f"{where} imports {full}: only {sorted(RESTRICTED[top])} may import {top}")
            continue
        if top != "trainyard":
            continue
        target = target_module(imported, name)
        target_unit = unit_of(target)
        if target_unit not in (unit, *HELPERS, *LAYERS.get(unit, ())):
            problems.append(f"{where} imports {target}: {unit} may import {', '.join(LAYERS.get(unit, ())) or 'only the helpers'}")
        private_module = any(p.startswith("_") and not p.startswith("__") for p in target.split(".")[1:])
        if private_module and target_unit not in (unit, *HELPERS):
            problems.append(f"{where} imports the private module {target} of another unit")
        if name and target == imported and name.startswith("_") and not name.startswith("__"):
            problems.append(f"{where} imports the private name {name} from {imported}")
    return problems


def all_modules() -> dict[str, str]:
    """Every module of the package (not the export bundle's files: package data, run elsewhere)."""
    return {module_name(p): p.read_text() for p in sorted(PACKAGE.rglob("*.py")) if "templates" not in p.parts}


def unit_graph(modules: dict[str, str]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, source in modules.items():
        unit = unit_of(module)
        for _, imported, name in imports(source, module):
            if imported.split(".")[0] == "trainyard":
                target = unit_of(target_module(imported, name))
                if target != unit:
                    graph.setdefault(unit, set()).add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                found = visit(nxt, [*path, nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def render_table() -> str:
    """The table as README.md shows it."""
    rows = [f"  {unit:<11} -> {', '.join(deps) if deps else '(nothing but the helpers)'}" for unit, deps in LAYERS.items() if unit != "__init__"]
    return "\n".join(["trainyard/   (a unit may import only what its row names, and the helpers _logging, _trust, _yaml)", *rows])


# -- the tests -----------------------------------------------------------------------------


def test_every_unit_is_in_the_table():
    units = {unit_of(m) for m in all_modules()} - set(HELPERS)
    assert units <= set(LAYERS), f"add {sorted(units - set(LAYERS))} to LAYERS (and to README.md's layout)"


def test_every_import_follows_the_layers():
    problems = [p for module, source in all_modules().items() for p in violations(source, module)]
    assert problems == []


def test_no_import_circle_between_units():
    assert find_cycle(unit_graph(all_modules())) is None


def test_the_table_itself_points_down():
    order = list(LAYERS)
    for unit, deps in LAYERS.items():
        if unit != "__init__":
            assert all(order.index(d) > order.index(unit) for d in deps), f"{unit}'s row names a unit above it"


@pytest.mark.parametrize("path", sorted((PACKAGE / "engine").rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_ray_inside_any_engine_function_is_caught(path):
    module = module_name(path)
    source = path.read_text()
    assert violations(source, module) == []
    for probe in ("import ray", "from ray import train", "import optuna", "from trainyard.execution import launch"):
        mutated = source + f"\n\ndef _probe():\n    {probe}\n"
        assert violations(mutated, module), f"{probe!r} in {path.name} went unnoticed"


def test_private_names_and_circles_are_caught():
    assert violations("from trainyard.engine.loop import _helper\n", "trainyard.hpo.runner")
    assert violations("from trainyard.models._config import check\n", "trainyard.engine.loop")
    assert violations("def f():\n    from trainyard.hpo import sweep\n", "trainyard.execution.launch")
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_readme_shows_the_same_table():
    assert render_table() in (ROOT / "README.md").read_text(), "README.md's layout section must show:\n" + render_table()


# -- size and laziness --------------------------------------------------------------------

LONGEST_FUNCTION = 80  # lines; a longer one says why in a `# long: ...` comment on or above its def
ENGINE_LARGEST_MODULE = 350  # lines
# Imported inside functions only: what `import trainyard` / `trainyard.Trainer` must not pay for
# (Ray, Optuna, torch's distributed and export machinery, torch itself in the torch-free
# modules, pandas, matplotlib, SQLAlchemy, the optional extras).
LAZY_BOUNDARY = ("ray", "optuna", "torch", "pyarrow", "pandas", "matplotlib", "sqlalchemy", "onnx", "onnxruntime", "transformers", "huggingface_hub", "peft",
                 "wandb", "mlflow", "tensorboard", "datasets", "psycopg", "grp", "pwd")
LAZY_UNITS = ("cli",)  # a command loads what it runs: `trainyard --help` answers without torch


def long_functions(source: str) -> list[tuple[int, str, int]]:
    """(line, name, length) of every function over LONGEST_FUNCTION lines with no reason given."""
    lines = source.split("\n")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            around = " ".join(lines[max(0, node.lineno - 2) : node.lineno])
            if length > LONGEST_FUNCTION and "# long:" not in around:
                found.append((node.lineno, node.name, length))
    return found


def lazy_imports(source: str, module: str) -> list[str]:
    """Imports inside functions that are not at the boundary (package faces, whose
    `__getattr__` loads names on first use, and the CLI may import lazily)."""
    is_face = (PACKAGE.parent / Path(*module.split("."))).is_dir()
    if unit_of(module) in LAZY_UNITS or is_face:
        return []
    problems = []
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    name = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                    if (name or "").split(".")[0] not in LAZY_BOUNDARY:
                        problems.append(f"{module}:{node.lineno} imports {name} inside {fn.name}(): import it at the top")
    return problems


def test_no_function_is_longer_than_the_limit_without_saying_why():
    found = [f"{module}:{line} {name}() is {length} lines" for module, source in all_modules().items() for line, name, length in long_functions(source)]
    assert found == [], f"split these by phase, or say why in a '# long:' comment on the def: {found}"


def test_the_engines_largest_module_stays_readable():
    sizes = {p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines()) for p in (PACKAGE / "engine").rglob("*.py")}
    assert max(sizes.values()) < ENGINE_LARGEST_MODULE, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_imports_inside_functions_are_only_at_the_boundary():
    assert [p for module, source in all_modules().items() for p in lazy_imports(source, module)] == []


def test_the_size_and_laziness_checks_can_fail():
    body = "\n".join(f"    x{i} = {i}" for i in range(LONGEST_FUNCTION))
    assert long_functions(f"def f():\n{body}\n")
    assert not long_functions(f"# long: a table of cases, one a line\ndef f():\n{body}\n")
    assert lazy_imports("def f():\n    from trainyard.engine import checkpoint\n", "trainyard.hpo.runner")
    assert not lazy_imports("def f():\n    import ray\n", "trainyard.hpo.runner")
