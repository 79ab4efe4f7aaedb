"""Names stay names and writes stay inside their root: absolute, `..` and existing-directory names."""

from __future__ import annotations

import pytest

from arena_dagster.paths import UnsafePathError, check_name, inside, remove_tree, replace_dir, slug


@pytest.mark.parametrize("name", ["SFT-I1", "target-I0", "qwen2.5-7b-instruct", "claude-3.7-sonnet", "a", "x_y"])
def test_plain_names_pass(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["/home/me/precious", "../../../../home/me/evil", "a/b", "..", ".", ".hidden",
                                  "", "a..b", "name with space", "x" * 129, None, 3])
def test_paths_and_odd_names_are_refused(name):
    with pytest.raises(UnsafePathError):
        check_name(name, "models.competitors key")


def test_slug_is_a_plain_name_and_unique():
    assert slug("SFT-I1") == "SFT-I1"
    made = {slug(text) for text in ["meta-llama/Llama-3.1-70B", "meta-llama Llama-3.1-70B", "../evil"]}
    assert len(made) == 3
    for name in made:
        check_name(name)


def test_inside_refuses_escapes_and_symlinks(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    assert inside(home, "models/x") == (home / "models" / "x").resolve()
    for escape in ["../outside", str(tmp_path / "elsewhere"), "models/../../outside"]:
        with pytest.raises(UnsafePathError):
            inside(home, escape)
    (tmp_path / "precious").mkdir()
    (home / "link").symlink_to(tmp_path / "precious")
    with pytest.raises(UnsafePathError):
        inside(home, "link/file")


def test_remove_and_replace_never_touch_an_existing_directory_outside(tmp_path):
    home = tmp_path / "home"
    precious = tmp_path / "precious"
    precious.mkdir(parents=True)
    (precious / "keep.txt").write_text("mine")
    home.mkdir()
    with pytest.raises(UnsafePathError):
        remove_tree(home, precious)
    with pytest.raises(UnsafePathError):
        remove_tree(home, home)
    (home / "new").mkdir()
    with pytest.raises(UnsafePathError):
        replace_dir(home, home / "new", precious)
    assert (precious / "keep.txt").read_text() == "mine"
    (home / "old").mkdir()
    (home / "old" / "a").write_text("old")
    (home / "new" / "b").write_text("new")
    replace_dir(home, home / "new", home / "old")
    assert [p.name for p in (home / "old").iterdir()] == ["b"] and not (home / "new").exists()
