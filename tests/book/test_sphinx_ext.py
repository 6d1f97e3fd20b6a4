"""The book's Sphinx extension keeps each script once per page."""
from sphinx.builders.html._assets import _JavaScript

from rmpm.book.sphinx_ext import unique_scripts


def test_an_inline_script_registered_twice_is_kept_once_in_order():
    body = 'const THEBE_JS_URL = "x"'
    scripts = [_JavaScript("_static/a.js"), _JavaScript(None, body=body),
               _JavaScript("", body=body), _JavaScript("_static/b.js", **{"async": "async"}),
               _JavaScript("_static/a.js"), _JavaScript(None, body="let y = 1")]
    kept = unique_scripts(scripts)
    assert [(js.filename, js.attributes) for js in kept] == [
        ("_static/a.js", {}), (None, {"body": body}),
        ("_static/b.js", {"async": "async"}), (None, {"body": "let y = 1"})]


def test_same_file_with_other_attributes_is_not_a_repeat():
    scripts = [_JavaScript("_static/a.js"), _JavaScript("_static/a.js", defer="defer")]
    assert len(unique_scripts(scripts)) == 2
