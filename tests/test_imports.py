"""`dbl_ps.imports.import_callable`: user code by import path, and one clear error per mistake."""

from __future__ import annotations

import sys

import pytest

from dbl_ps.imports import ImportPathError, import_callable


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_user_pkg").mkdir()
    (tmp_path / "my_user_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_user_pkg" / "things.py").write_text(
        "def make(x=1):\n    return x * 2\n\nclass Box:\n    @staticmethod\n    def build():\n        return 'box'\n\n"
        "NUMBER = 3\n")
    (tmp_path / "my_user_pkg" / "broken.py").write_text("import a_module_that_is_not_there_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_user_pkg"
    for name in [n for n in sys.modules if n.startswith("my_user_pkg")]:
        del sys.modules[name]


def test_both_forms_and_nested_attributes(user_module):
    assert import_callable("my_user_pkg.things:make")(4) == 8
    assert import_callable("my_user_pkg.things.make")(5) == 10
    assert import_callable("my_user_pkg.things:Box.build")() == "box"
    assert import_callable("collections:OrderedDict") is __import__("collections").OrderedDict


@pytest.mark.parametrize("path", ["", "make", "my_user_pkg.things:", ":make", "a b:c", "pkg:1x", 3])
def test_malformed_paths(path):
    with pytest.raises(ImportPathError, match="package.module:callable"):
        import_callable(path)


def test_module_that_does_not_import_shows_the_import_error(user_module):
    with pytest.raises(ImportPathError, match="module 'my_user_pkg.nothere' does not import .*ModuleNotFoundError"):
        import_callable("my_user_pkg.nothere:make")
    with pytest.raises(ImportPathError, match="a_module_that_is_not_there_xyz"):
        import_callable("my_user_pkg.broken:make", "data.factory")


def test_missing_attribute_and_not_callable(user_module):
    with pytest.raises(ImportPathError, match=r"model.name='my_user_pkg.things:nope': .*no attribute 'nope' \(it has .*make"):
        import_callable("my_user_pkg.things:nope", "model.name")
    with pytest.raises(ImportPathError, match="is a int, not a callable"):
        import_callable("my_user_pkg.things:NUMBER")
