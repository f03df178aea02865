"""The long-document dataset built from the Python docs: a page is cut at its section titles, and every section of
250+ words is one example labelled by its part of the docs."""

from collections import Counter

from bertkit.data.builtin import DOCS_PARTS, MIN_SECTION_WORDS, rest_sections
from bertkit.data.packaged import python_docs_dir
from bertkit.data.tasks import BUILTIN_DATASETS, load_builtin

PAGE = """:mod:`demo` --- a page
=====================

Intro text.

First section
-------------

Body of the first
section.

.. note::
   ===== not a title: indented and no line above it

Second ~~~ section
~~~~~~~~~~~~~~~~~~

Short underline
~~~
Body."""


def test_rest_sections_cut_before_each_title():
    sections = rest_sections(PAGE)
    assert [s.splitlines()[0] for s in sections] == [":mod:`demo` --- a page", "First section", "Second ~~~ section"]
    assert sections[1].endswith("===== not a title: indented and no line above it")
    assert sections[2].endswith("Short underline\n~~~\nBody.")  # an underline shorter than its title is not one
    assert "".join(sections).replace("\n", "") == PAGE.replace("\n", "")  # nothing lost, nothing repeated
    assert rest_sections("") == []


def test_python_docs_sections_dataset():
    python_docs_dir()  # make installs python3.11-doc; an error here names how to get it
    splits = load_builtin("python-docs-sections")
    everything = [t for s in splits.values() for t in s.texts]
    labels = Counter(y for s in splits.values() for y in s.labels)
    assert len(everything) == len(set(everything)) > 1000
    assert all(len(t.split()) >= MIN_SECTION_WORDS for t in everything)
    assert set(labels) == {*DOCS_PARTS.values(), "other"} and labels.most_common(1)[0][0] == "library"
    assert BUILTIN_DATASETS["python-docs-sections"][0] == "classification"
    assert f"({len(everything):,})" in BUILTIN_DATASETS["python-docs-sections"][2]  # the description's count is true
