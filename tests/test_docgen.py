"""Generated doc blocks: the docs say what the code declares, and the generator's rules."""

import dataclasses
import os
import shutil

import pytest

from pyrust import docgen
from pyrust.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_generated_blocks_are_up_to_date():
    stale = docgen.stale(ROOT)
    assert not stale, "%s out of date: run `python -m pyrust.docgen`\n%s" % (
        ", ".join(os.path.relpath(path, ROOT) for path, _ in stale),
        "".join(diff for _, diff in stale))


def test_readme_has_one_settings_row_per_setting_in_order():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = readme.split("<!-- settings:begin -->\n")[1].split("<!-- settings:end -->")[0]
    keys = [line.split(" | ")[0][3:-1] for line in block.splitlines()[2:]]
    assert keys == [field.name for field in dataclasses.fields(Config)]


@pytest.mark.parametrize("field", dataclasses.fields(Config), ids=lambda f: f.name)
def test_every_setting_says_all_the_table_shows(field):
    for key in ("doc", "shown", "accepted"):
        text = field.metadata[key]
        assert text and "|" not in text and "\n" not in text, (field.name, key)
    # The docs are the same on every platform: the socket's limit names both.
    assert "at most 107 bytes (103 on macOS)" in field.metadata["accepted"] \
        or field.metadata["accepted"] == field.metadata["check"].expected


@pytest.mark.parametrize("text, body, result", [
    ("a\n<!-- x:begin -->\nold\nlines\n<!-- x:end -->\nb", "new\n",
     "a\n<!-- x:begin -->\nnew\n<!-- x:end -->\nb"),
    ("<!-- x:begin -->\n<!-- x:end -->", "new", "<!-- x:begin -->\nnew\n<!-- x:end -->"),
    ("<!-- x:begin -->\nold\n<!-- x:end -->", "", "<!-- x:begin -->\n<!-- x:end -->"),
    ("<!-- y:begin -->\nold\n<!-- y:end -->\n<!-- x:begin -->\nold\n<!-- x:end -->", "new",
     "<!-- y:begin -->\nold\n<!-- y:end -->\n<!-- x:begin -->\nnew\n<!-- x:end -->"),
])
def test_replace_block_replaces_only_between_its_markers(text, body, result):
    assert docgen.replace_block(text, "x", body) == result
    assert docgen.replace_block(result, "x", body) == result


@pytest.mark.parametrize("text", [
    "no markers", "<!-- x:begin -->\nold\n", "old\n<!-- x:end -->",
    "<!-- x:end -->\n<!-- x:begin -->\n",
    "<!-- x:begin -->\n<!-- x:begin -->\n<!-- x:end -->",
])
def test_replace_block_refuses_missing_or_misplaced_markers(text):
    with pytest.raises(ValueError, match="block 'x'"):
        docgen.replace_block(text, "x", "new")


def test_check_shows_a_diff_and_fails_until_the_generator_runs(tmp_path, capsys):
    for block in docgen.BLOCKS:  # every file that holds a block
        os.makedirs(os.path.dirname(tmp_path / block.path), exist_ok=True)
        shutil.copy(os.path.join(ROOT, block.path), tmp_path / block.path)
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text().replace("| `workers` |", "| `workers` | x |", 1))
    assert docgen.main(["--check", "--root", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "-| `workers` | x |" in out and "+| `workers` | number of CPUs |" in out
    assert "python -m pyrust.docgen" in err
    assert docgen.main(["--root", str(tmp_path)]) == 0
    assert readme.read_text() == open(os.path.join(ROOT, "README.md")).read()
    assert docgen.main(["--check", "--root", str(tmp_path)]) == 0
