"""Hostile control-plane input through the real command line: `localmesh apply` refuses it with a
ConfigError naming file, resource and field (exit 2, no traceback) and changes nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCALMESH = ROOT / ".venv" / "bin" / "localmesh"
PASSTHROUGH = ROOT / "manifests" / "overlays" / "passthrough"
CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: hostile, namespace: recipes}\n"


def localmesh(state: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "LOCALMESH_STATE": str(state)}
    return subprocess.run(
        [str(LOCALMESH), *args], capture_output=True, text=True, timeout=60, env=env, cwd=cwd
    )


@pytest.fixture(scope="module")
def applied(tmp_path_factory) -> Path:
    """A state folder with the passthrough option applied (no stack running)."""
    state = tmp_path_factory.mktemp("applied")
    done = localmesh(state, "apply", "-k", str(PASSTHROUGH))
    assert done.returncode == 0, done.stderr
    return state


@pytest.fixture
def state(applied: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "state"
    shutil.copytree(applied, copy)
    return copy


def refused(state: Path, target: Path, *flag: str) -> str:
    """Apply target, expect exit 2 with a clean message, and the saved config untouched."""
    before = (state / "cluster-state.json").read_bytes()
    done = localmesh(state, "apply", *(flag or ("-f",)), str(target), cwd=target.parent)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert (state / "cluster-state.json").read_bytes() == before
    assert sorted(p.name for p in state.iterdir()) == ["cluster-state.json"]
    return done.stderr


def laughs(levels: int) -> str:
    """The 'billion laughs': each level an anchored list of 9 aliases of the level below."""
    lines = ['  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for n in range(1, levels):
        lines.append(f"  l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]")
    return CONFIGMAP + "data:\n" + "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_as_kubectl_refuses_it(state, tmp_path):
    bomb = tmp_path / "laughs.yaml"
    bomb.write_text(laughs(10))
    assert bomb.stat().st_size < 1024
    err = refused(state, bomb)
    assert "laughs.yaml: invalid YAML: document contains excessive aliasing" in err


def test_a_few_anchors_are_still_fine(state, tmp_path):
    ok = tmp_path / "anchors.yaml"
    ok.write_text(laughs(2))  # 81 scalars through 9 aliases: normal use of anchors
    done = localmesh(state, "apply", "-f", str(ok))
    assert done.returncode == 0, done.stderr
    assert "ConfigMap recipes/hostile created" in done.stdout or "hostile" in done.stdout


def test_file_above_the_api_servers_3_mib_is_refused(state, tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text(CONFIGMAP + "data:\n  blob: " + "x" * (3 * 1024 * 1024) + "\n")
    err = refused(state, big)
    assert "big.yaml: " in err and "3 MiB" in err and "split the file" in err


@pytest.mark.parametrize(
    ("body", "field", "what"),
    [
        ("data:\n  key: !!binary aGVsbG8=\n", "data.key", "binary data (!!binary)"),
        ("data: !!set {a, b}\n", "data", "a set (!!set)"),
        ("data:\n  1: one\n  a: two\n", "data", "key 1 is not a string (integer 1)"),
        ("data:\n  n: " + "7" * 5000 + "\n", "data.n", "an integer of 5000 digits is out of range"),
        ("data:\n  deep: " + "[" * 150 + "]" * 150 + "\n", None, "nested more than 100 levels deep"),
        ("spec: {port: .nan}\n", "spec.port", "nan is not a JSON number"),
    ],
    ids=["binary", "set", "mixed-type-keys", "5000-digit-integer", "deep-nesting", "nan"],
)
def test_yaml_beyond_json_names_file_resource_and_field(state, tmp_path, body, field, what):
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text(CONFIGMAP + body)
    err = refused(state, hostile)
    assert err.startswith("localmesh apply: hostile.yaml")
    assert what in err
    if field is not None:
        assert f"ConfigMap hostile: {field}: " in err


def test_1200_deep_kustomization_chain_is_refused(state, tmp_path):
    # Siblings k0 -> k1 -> ... -> k1200 (a nested path would exceed the file system's name limit).
    for n in range(1201):
        level = tmp_path / f"k{n}"
        level.mkdir()
        (level / "kustomization.yaml").write_text(f"resources:\n- ../k{n + 1}\n" if n < 1200 else "{}\n")
    top = tmp_path / "k0"
    err = refused(state, top, "-k")
    assert "kustomization.yaml: resources[0]: '../k100': kustomizations nested more than 100 deep" in err


def test_error_on_a_fresh_state_saves_nothing_and_up_still_starts_from_the_default(tmp_path):
    state = tmp_path / "fresh"
    mesh = ROOT / "manifests" / "istio" / "mesh-registry-only.yaml"
    done = localmesh(state, "apply", "-f", str(mesh))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no Deployment idgen" in done.stderr
    assert not (state / "cluster-state.json").exists()
    # Nothing was saved, so the next command starts from the defaults as `up` would.
    done = localmesh(state, "apply", "-k", str(PASSTHROUGH))
    assert done.returncode == 0, done.stderr
    assert "option passthrough" in done.stdout


def test_a_huge_integer_as_a_name_is_described_as_such(state, tmp_path):
    hostile = tmp_path / "name.yaml"
    hostile.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: " + "9" * 5000 + "}\n")
    err = refused(state, hostile)
    assert "metadata.name: expected a non-empty string, got an integer of 5000 digits" in err


def test_merge_key_bomb_is_refused_too(state, tmp_path):
    # `<<` merges copy the merged mappings when the document is built: doubling at each level.
    lines = ["data:", "  m0: &m0 {k0: v}"]
    lines += [f"  m{n}: &m{n} {{<<: [*m{n - 1}, *m{n - 1}], k{n}: v}}" for n in range(1, 30)]
    bomb = tmp_path / "merge.yaml"
    bomb.write_text(CONFIGMAP + "\n".join(lines) + "\n")
    assert "document contains excessive aliasing" in refused(state, bomb)
