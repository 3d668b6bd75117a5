"""The API reference: every public function and class is documented, and pdoc renders it."""

import importlib
import inspect
import pkgutil

import pytest

import qdgs_lib


def public_symbols():
    """(qualified name, object) of every module and every function or class that a module of
    qdgs_lib defines without a leading underscore."""
    for info in pkgutil.walk_packages(qdgs_lib.__path__, "qdgs_lib."):
        module = importlib.import_module(info.name)
        yield info.name, module
        for name, obj in vars(module).items():
            if not name.startswith("_") and getattr(obj, "__module__", None) == info.name \
                    and (inspect.isfunction(obj) or inspect.isclass(obj)):
                yield f"{info.name}.{name}", obj


def own_docstring(obj) -> bool:
    doc = obj.__doc__ or ""
    # a dataclass or NamedTuple without one gets its signature as its docstring
    return bool(doc.strip()) and not (inspect.isclass(obj) and doc.startswith(obj.__name__ + "("))


def test_every_public_function_and_class_has_a_docstring():
    symbols = dict(public_symbols())
    assert len(symbols) > 300  # the walk found the package (385 symbols when written)
    missing = [name for name, obj in symbols.items() if not own_docstring(obj)]
    assert not missing, f"document these (or prefix them with _ if internal): {missing}"


def test_pdoc_renders_the_api_reference(tmp_path, monkeypatch):
    pdoc = pytest.importorskip("pdoc")  # (the dev extra installs it: make docs)
    monkeypatch.setenv("PDOC_ALLOW_EXEC", "1")
    pdoc.render.configure(docformat="google")
    pdoc.pdoc("qdgs_lib", output_directory=tmp_path)
    pages = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.html")}
    modules = {name for name, obj in public_symbols() if inspect.ismodule(obj)}
    assert {m.replace(".", "/") + ".html" for m in modules} <= pages
    page = (tmp_path / "qdgs_lib" / "image_prompts.html").read_text()
    assert "ImagePrompt" in page and "modality gap" in page
