"""localmesh's layers import one way (mesh <- pilot <- proxy, stack <- cli and the workshop), and the
egress options are listed once, from manifests/overlays/."""

from __future__ import annotations

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
