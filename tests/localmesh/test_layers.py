"""localmesh's layers import one way (mesh <- pilot <- proxy, envoy <- stack <- cli and the workshop), and the
egress options are listed once, from manifests/overlays/."""

from __future__ import annotations

import ast
import re

import pytest

from localmesh.stack.topology import OPTIONS, ROOT, egress_options


def test_the_options_are_the_overlays_in_their_numbered_order():
    assert OPTIONS == ("passthrough", "blackhole", "serviceentry")
    assert set(OPTIONS) == {p.name for p in (ROOT / "manifests" / "overlays").iterdir() if p.is_dir()}


def test_make_spells_the_same_options():
    (line,) = re.findall(r"^OPTIONS := (.*)$", (ROOT / "mk" / "options.mk").read_text(), re.M)
    assert tuple(line.split()) == OPTIONS


def test_an_overlay_without_its_numbered_header_is_named(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "kustomization.yaml").write_text("# Option 2, b: second\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "kustomization.yaml").write_text("# Option 1, a: first\n")
    assert egress_options(tmp_path) == ("a", "b")
    (tmp_path / "a" / "kustomization.yaml").write_text("resources: []\n")
    with pytest.raises(
        ValueError, match=r"a/kustomization.yaml: the first line must be '# Option <number>, a:"
    ):
        egress_options(tmp_path)


# --- the import rules -------------------------------------------------------------------------------

PACKAGE = ROOT / "localmesh"
# A module's layer is its sub-package; the modules at the top (cli, the workshop: demo, demopage,
# expected) sit above them all. A module imports only from its own layer or the layers below.
# envoy (real Envoy run on pilot's output) sits after proxy and before stack, and, like stack, does
# not import the Python data plane (PEERS).
RANK = {"mesh": 0, "pilot": 1, "proxy": 2, "envoy": 3, "stack": 4, "top": 5}
PEERS = {("envoy", "proxy"), ("stack", "proxy")}
# Within mesh: a leaf of names, then loading, the schema, the state and the store, in that order.
MESH_ORDER = ("names", "load", "schema", "model", "store")
# Translation is pure: none of these in pilot/.
IO_MODULES = {"asyncio", "http", "os", "pathlib", "requests", "shutil", "socket", "subprocess", "urllib"}
WORKSHOP = ("demo", "demopage", "expected")


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, object]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path) -> set[str]:
    """Every module `path` imports, wherever the import sits (top level, function, TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def local_imports(path, known) -> set[str]:
    return {name for name in imports(path) if name in known and name != module_name(path)}


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else "top"


def test_every_module_is_in_a_known_layer():
    assert {layer(m) for m in modules()} <= set(RANK)
    assert {m for m in modules() if layer(m) == "top"} == {
        "localmesh",
        "localmesh.__main__",
        "localmesh.cli",
        *(f"localmesh.{m}" for m in WORKSHOP),
    }


def test_imports_point_down_the_layers():
    known = modules()
    upward = [
        f"{name} imports {target}"
        for name, path in known.items()
        for target in local_imports(path, known)
        if RANK[layer(target)] > RANK[layer(name)]
        or (layer(name) != layer(target) and RANK[layer(target)] == RANK[layer(name)])
        or (layer(name), layer(target)) in PEERS
    ]
    assert upward == []


def test_mesh_names_is_a_leaf_and_mesh_modules_import_in_order():
    known = modules()
    wrong = []
    for index, leaf in enumerate(MESH_ORDER):
        name = f"localmesh.mesh.{leaf}"
        allowed = {f"localmesh.mesh.{m}" for m in MESH_ORDER[:index]} | {"localmesh.mesh"}
        wrong += [f"{name} imports {t}" for t in local_imports(known[name], known) - allowed]
    assert wrong == []
    assert {m for m in known if layer(m) == "mesh"} == {"localmesh.mesh"} | {
        f"localmesh.mesh.{m}" for m in MESH_ORDER
    }


def test_pilot_does_no_io():
    for name, path in modules().items():
        if layer(name) == "pilot":
            used = {m.split(".")[0] for m in imports(path)}
            assert used & IO_MODULES == set(), name
            calls = {
                n.func.id
                for n in ast.walk(ast.parse(path.read_text()))
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
            }
            assert "open" not in calls, name


def test_there_is_no_import_cycle():
    known = modules()
    graph = {name: local_imports(path, known) for name, path in known.items()}
    # A module is on a cycle when it can reach itself.
    on_cycle = []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            node = todo.pop()
            if node == start:
                on_cycle.append(start)
                break
            if node not in seen:
                seen.add(node)
                todo.extend(graph[node])
    assert on_cycle == []


def test_the_workshop_reads_egresswatch_only_through_its_api():
    known = modules()
    for leaf in WORKSHOP:
        used = {m for m in imports(known[f"localmesh.{leaf}"]) if m.split(".")[0] == "egresswatch"}
        internals = {m for m in used if m not in ("egresswatch", "egresswatch.api")}
        assert {m for m in internals if not m.startswith("egresswatch.api.")} == set(), leaf


def test_the_mesh_the_translation_and_the_proxy_know_no_app_by_name():
    named = []
    for name, path in modules().items():
        if layer(name) not in ("mesh", "pilot", "proxy"):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        named += [
            f"{name}:{node.lineno}: {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and any(app in node.value for app in ("idgen", "recipes"))
        ]
    assert named == []
