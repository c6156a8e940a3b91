"""The floor plan (ARCHITECTURE.md): a package imports only from its own floor or the floors below, the packages form
no import circle, the device runtime imports no project package but itself, no product package imports the test
tooling (devtools/), and no private name (``_x``) is imported across modules. Every import counts, those made inside
functions too."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOORS = {"runtime": 1, "pipeline": 2, "judge": 2, "zoo": 3, "calibration": 3, "export": 4, "optimize": 4,
          "verify": 5, "bench": 5, "serve": 5, "edgeattn": 6, "devtools": 7}
PRODUCT = [p for p in FLOORS if p != "devtools"]


def imports(pkg: str) -> list[tuple[str, int, str, list[str]]]:
    """(file, line, imported module, imported names) for every absolute import in ``pkg``."""
    out = []
    for f in sorted((ROOT / pkg).rglob("*.py")):
        rel = str(f.relative_to(ROOT))
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), rel)):
            if isinstance(node, ast.Import):
                out += [(rel, node.lineno, a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                out.append((rel, node.lineno, node.module, [a.name for a in node.names]))
    return out


def project_arrows() -> dict[str, set[str]]:
    arrows: dict[str, set[str]] = defaultdict(set)
    for pkg in FLOORS:
        for _, _, mod, _ in imports(pkg):
            top = mod.split(".")[0]
            if top in FLOORS and top != pkg:
                arrows[pkg].add(top)
    return arrows


def test_every_package_imports_only_its_floor_or_below():
    bad = [f"{f}:{line} ({pkg}, floor {FLOORS[pkg]}) imports {mod} (floor {FLOORS[mod.split('.')[0]]})"
           for pkg in FLOORS for f, line, mod, _ in imports(pkg)
           if mod.split(".")[0] in FLOORS and FLOORS[mod.split(".")[0]] > FLOORS[pkg]]
    assert not bad, "imports that run up a floor:\n" + "\n".join(bad)


def test_packages_form_no_import_circle():
    arrows = project_arrows()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in arrows.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    circles = sorted(p for p in FLOORS if p in reach(p))
    assert not circles, f"packages in an import circle: {circles} (arrows: {dict(arrows)})"


def test_runtime_imports_no_project_package_but_itself():
    bad = [f"{f}:{line} imports {mod}" for f, line, mod, _ in imports("runtime")
           if mod.split(".")[0] in FLOORS and mod.split(".")[0] != "runtime"]
    assert not bad, "runtime/ is copied onto devices alone:\n" + "\n".join(bad)


def test_no_product_package_imports_the_test_tooling():
    bad = [f"{f}:{line} imports {mod}" for pkg in PRODUCT for f, line, mod, _ in imports(pkg)
           if mod.split(".")[0] == "devtools"]
    assert not bad, "devtools/ is test tooling, not part of the product:\n" + "\n".join(bad)


def test_no_private_name_is_imported_across_modules():
    bad = [f"{f}:{line} from {mod} import {n}" for pkg in FLOORS for f, line, mod, names in imports(pkg)
           if mod.split(".")[0] in FLOORS for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_the_floor_rules_catch_a_violation(tmp_path, monkeypatch):
    """The checks above can fail: a runtime module importing a stage is reported."""
    import sys

    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "x.py").write_text("def f():\n    from verify.compare import _private\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = imports("runtime")
    assert found == [("runtime/x.py", 2, "verify.compare", ["_private"])]
