"""The book shows each chapter's parameters once, as a table, in place of
papermill's two parameter cells (the notebook's defaults, then the injected values)."""
import nbformat
import pytest


from rmpm.book import notebooks as NB
from rmpm.book.chapter import (PARAMETER_CELL_ID, parameter_table, present_parameters,
                           resolve_default)
from rmpm.analysis.profiles import get_profile

SOURCE = '''profile = "smoke"   # smoke | smoke_multi | default | paper
dataset = None      # None: the profile's first data set
n_boot = None       # bootstrap resamples; None: the profile's n_boot
keep = None         # None: 2 x something this module does not know
seed = 0            # every random draw derives from it
'''


def _notebook(injected=None):
    cells = [nbformat.v4.new_markdown_cell("# A chapter"),
             nbformat.v4.new_code_cell(SOURCE, metadata={"tags": ["parameters"]})]
    if injected is not None:
        cells.append(nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected-parameters"]}))
    cells.append(nbformat.v4.new_code_cell("print(profile)", metadata={"tags": ["hide-input"]}))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


@pytest.fixture
def declared(tmp_path):
    import papermill as pm
    path = tmp_path / "nb.ipynb"
    nbformat.write(_notebook(), path)
    return pm.inspect_notebook(str(path))


def test_none_defaults_resolve_to_the_profiles_values():
    p = get_profile("default")
    assert resolve_default("None: the profile's first data set", p) == (True, p.datasets[0])
    assert resolve_default("bootstrap resamples; None: the profile's n_boot", "smoke") == (
        True, get_profile("smoke").n_boot)
    assert resolve_default("None: 2 x reference_seeds", p) == (False, None)
    assert resolve_default("every random draw", p) == (False, None)


def test_table_names_each_value_once_with_its_source(declared):
    text = parameter_table(declared, {"profile": "default"})
    p = get_profile("default")
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == ["profile", "dataset", "n_boot", "keep", "seed"]
    assert "| `profile` | `'default'` | this build |" in text
    assert "profile **`default`**" in text and "smoke`" not in text.split("| `profile`")[0]
    assert f"| `n_boot` | `{p.n_boot!r}` | profile `default` |" in text
    assert f"| `dataset` | `{p.datasets[0]!r}` | profile `default`" in text
    assert "| `keep` | `None` | notebook default |" in text  # unknown phrase: left as it is
    assert "| `seed` | `0` | notebook default |" in text
    assert "smoke \\| smoke_multi \\| default \\| paper" in text  # '|' escaped inside a cell


def test_without_injected_values_the_notebook_default_profile_is_used(declared):
    text = parameter_table(declared, {})
    assert "| `profile` | `'smoke'` | notebook default |" in text
    assert f"`{get_profile('smoke').n_boot!r}` | profile `smoke`" in text


def test_both_parameter_cells_are_removed_and_one_table_follows(declared):
    nb = _notebook('# Parameters\nprofile = "default"\n')
    out = present_parameters(nb, declared, {"profile": "default"})
    tags = [c.metadata.get("tags", []) for c in out.cells]
    assert "remove-cell" in tags[1] and "remove-cell" in tags[2]
    assert out.cells[3].cell_type == "markdown" and out.cells[3]["id"] == PARAMETER_CELL_ID
    assert "this build" in out.cells[3].source
    assert "remove-cell" not in tags[4]
    assert all("remove-cell" not in c.metadata.get("tags", []) for c in nb.cells)  # input untouched
    again = present_parameters(out, declared, {"profile": "default"})
    assert sum(c.get("id") == PARAMETER_CELL_ID for c in again.cells) == 1
    assert again.cells[1].metadata["tags"].count("remove-cell") == 1
    nbformat.validate(again)


def test_a_notebook_without_parameters_is_refused(declared):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    with pytest.raises(ValueError, match="no cell tagged 'parameters'"):
        present_parameters(nb, declared, {})


def test_every_chapter_gets_a_table_that_resolves_its_profile_defaults():
    for path in NB.notebook_paths():
        import papermill as pm
        declared = pm.inspect_notebook(str(path))
        text = parameter_table(declared, {"profile": "smoke"})
        assert text.count("| `profile` |") == 1, path.stem
        for name in ("n_boot", "n_models", "dataset", "datasets"):
            spec = declared.get(name)
            if spec and "the profile's" in (spec.get("help") or ""):
                assert f"| `{name}` | `None` |" not in text, (path.stem, name)


@pytest.mark.trains
def test_the_book_build_writes_the_table_into_the_executed_copy(tmp_path):
    src = tmp_path / "ch.ipynb"
    nbformat.write(_notebook(), src)
    out = tmp_path / "out" / "ch.ipynb"
    NB.execute(src, out, {"profile": "default"})
    NB.show_parameters(src, out, {"profile": "default"})
    done = nbformat.read(out, as_version=4)
    removed = [c for c in done.cells if "remove-cell" in c.metadata.get("tags", [])]
    assert len(removed) == 2 and 'profile = "default"' in removed[1].source
    table = [c for c in done.cells if c.get("id") == PARAMETER_CELL_ID]
    assert len(table) == 1 and "| `profile` | `'default'` | this build |" in table[0].source
    printed = [o for c in done.cells for o in c.get("outputs", []) if o.get("name") == "stdout"]
    assert printed[0]["text"].strip() == "default"  # the page really ran with the build's value
