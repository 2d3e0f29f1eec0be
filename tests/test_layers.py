"""The dependency rule of docs/architecture.md: each layer imports only from the
layers below it, and no package imports upward or sideways.

Every module under ``mergekit_led/`` is parsed with ``ast``; every import is
checked, at module level and inside functions (a lazy import is still a
dependency). ``LAYERS`` is the one statement of the order.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "mergekit_led"
# The studies run from a clone and are not installed: the product never imports them.
STUDIES = PACKAGE.parent / "studies"

# Bottom to top. A unit is a subpackage or a top-level module of mergekit_led;
# "__init__" is mergekit_led/__init__.py itself (the public names, registration
# and the cached-store resolver it installs). A unit may import its own modules
# and any unit of a lower layer; units of one layer do not import each other.
LAYERS: Tuple[Tuple[str, ...], ...] = (
    ("_version", "errors"),
    (
        "atomic",
        "tables",
        "environment",
        "tiny_models",
        "jsonl",
        "console",
        "plotting",
        "local_paths",
    ),
    ("testing",),
    ("core",),
    ("store",),
    ("method", "location"),
    ("config",),
    ("analysis",),
    ("merge",),
    ("prepare", "evaluation"),
    ("sweep",),
    ("__init__",),
    ("cli",),
    ("__main__",),
)
LEVEL: Dict[str, int] = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _unit(module: str) -> Optional[str]:
    """The layer unit of a ``mergekit_led`` module name; None outside the package."""
    parts = module.split(".")
    if parts[0] != "mergekit_led":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imported(path: Path, root: Path) -> Iterator[Tuple[int, str]]:
    """(line, absolute module name) of every import in the file, at any depth."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # `from mergekit_led import location`: a module
                name = alias.name
                if target == "mergekit_led" and any(
                    (root / n).exists() for n in (name, f"{name}.py")
                ):
                    yield node.lineno, f"mergekit_led.{name}"


def layer_violations(root: Path = PACKAGE) -> List[str]:
    violations = []
    for path in sorted(root.rglob("*.py")):
        source = _unit(_module_name(path, root))
        for line, target in _imported(path, root):
            unit = _unit(target)
            if unit is None or unit == source:
                continue
            where = f"{path.relative_to(root.parent)}:{line}"
            if source not in LEVEL or unit not in LEVEL:
                missing = source if source not in LEVEL else unit
                violations.append(f"{where}: {missing!r} is in no layer of LAYERS")
            elif LEVEL[unit] >= LEVEL[source]:
                violations.append(
                    f"{where}: {source} (layer {LEVEL[source]}) imports {target} "
                    f"(layer {LEVEL[unit]}): only lower layers may be imported"
                )
    return violations


def test_every_unit_is_in_one_layer():
    units = [unit for layer in LAYERS for unit in layer]
    assert len(units) == len(set(units))
    on_disk = {_unit(_module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert on_disk == set(units)


def test_no_module_imports_a_higher_or_sibling_layer():
    assert layer_violations() == []


def test_the_package_does_not_import_its_test_helpers():
    """``mergekit_led.testing`` builds the tests' and benchmarks' model families;
    what the product needs of it (the word tokenizer) lives in ``tiny_models``."""
    importers = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "testing.py"
        for line, target in _imported(path, PACKAGE)
        if _unit(target) == "testing"
    ]
    assert importers == []


def test_an_upward_import_is_caught(tmp_path):
    root = tmp_path / "mergekit_led"
    (root / "core").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "core" / "__init__.py").write_text("")
    (root / "core" / "rule.py").write_text(
        "def lazy():\n    from mergekit_led.prepare import resolve\n"
    )
    (root / "core" / "relative.py").write_text("from ..store import reader\n")
    (root / "method").mkdir()
    (root / "method" / "sideways.py").write_text("import mergekit_led.location.locator\n")
    found = layer_violations(root)
    assert len(found) == 3, found
    assert "core/relative.py:1: core (layer 3) imports mergekit_led.store " in found[0]
    assert "core/rule.py:2: core (layer 3) imports mergekit_led.prepare " in found[1]
    assert (
        "method/sideways.py:1: method (layer 5) imports mergekit_led.location.locator " in found[2]
    )


def test_the_package_does_not_import_the_studies():
    """``studies/`` is not in the wheel: an import of it from the product would fail
    on every ``pip install mergekit-led``."""
    importers = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, target in _imported(path, PACKAGE)
        if target.split(".")[0] == "studies"
    ]
    assert importers == []


# Bottom to top: both worlds use the shared steps; the real-model world runs the seeds
# through the toy world's pipeline (its run_demo and settings), never the other way.
STUDY_LAYERS: Tuple[str, ...] = ("common", "toy", "smollm2")


def study_violations(root: Path = STUDIES) -> List[str]:
    level = {unit: index for index, unit in enumerate(STUDY_LAYERS)}
    violations = []
    for path in sorted(root.rglob("*.py")):
        parts = _module_name(path, root).split(".")
        source = parts[1] if len(parts) > 1 else None
        for line, target in _imported(path, root):
            target_parts = target.split(".")
            if target_parts[0] != root.name or len(target_parts) < 2:
                continue
            unit = target_parts[1]
            if source is None or unit == source:
                continue
            if unit not in level or source not in level or level[unit] > level[source]:
                violations.append(f"{path.relative_to(root.parent)}:{line}: imports {target}")
    return violations


def test_the_studies_import_only_downward():
    assert {path.parent.name for path in STUDIES.glob("*/__init__.py")} == set(STUDY_LAYERS)
    assert study_violations() == []


def test_an_upward_study_import_is_caught(tmp_path):
    root = tmp_path / "studies"
    (root / "common").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "common" / "__init__.py").write_text("")
    (root / "common" / "steps.py").write_text("def lazy():\n    from studies.toy import world\n")
    assert study_violations(root) == ["studies/common/steps.py:2: imports studies.toy"]
