"""The API reference: every public function and class, and every public method and property of
those classes, is documented, and pdoc renders it."""

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


def _member_function(attr):
    """The function behind a class attribute that is a method, staticmethod, classmethod or
    property (its getter), else None (fields, NamedTuple accessors, Enum members, constants)."""
    if isinstance(attr, property):
        return attr.fget
    if isinstance(attr, (staticmethod, classmethod)):
        return attr.__func__
    return attr if inspect.isfunction(attr) else None


def public_members():
    """(qualified name, class, name, function) of every public method and property that a class
    of :func:`public_symbols` defines in its own ``__dict__``: inherited members are the base's
    to document; dataclass, NamedTuple and Enum machinery is dunder or _private, or no function."""
    for qualname, cls in public_symbols():
        if not inspect.isclass(cls):
            continue
        for name, attr in vars(cls).items():
            fn = _member_function(attr)
            if not name.startswith("_") and fn is not None:
                yield f"{qualname}.{name}", cls, name, fn


def documented_in_qdgs_lib_base(cls, name) -> bool:
    """Whether a base class defined in qdgs_lib documents the member ``name`` that ``cls``
    overrides (the override inherits that doc, as :func:`inspect.getdoc` would show it); bases
    from elsewhere (nn.Module.forward, pickle.Unpickler.find_class) do not count."""
    for base in cls.__mro__[1:]:
        if base.__module__.startswith("qdgs_lib.") and name in vars(base):
            fn = _member_function(vars(base)[name])
            if fn is not None and (fn.__doc__ or "").strip():
                return True
    return False


def undocumented(cls, name, fn) -> bool:
    """A member with no docstring of its own and none to inherit from a qdgs_lib base."""
    return not (fn.__doc__ or "").strip() and not documented_in_qdgs_lib_base(cls, name)


def test_every_public_method_and_property_has_a_docstring():
    members = list(public_members())
    assert len(members) > 100  # the walk found the classes' members (116 when written)
    missing = [qualname for qualname, cls, name, fn in members if undocumented(cls, name, fn)]
    assert not missing, f"document these (or prefix them with _ if internal): {missing}"


def test_only_a_documented_qdgs_lib_base_excuses_an_undocumented_override():
    from qdgs_lib.generators.base import Generator

    class Sub(Generator):
        def decode(self, z):  # Generator.decode documents it
            return z

        def forward(self, z):  # nn.Module's doc does not count
            return z

        def extra(self):  # nothing to inherit
            return None

        @property
        def size(self):
            return 0

    found = {name: fn for name, fn in ((n, _member_function(a)) for n, a in vars(Sub).items())
             if fn is not None and not name.startswith("_")}
    assert set(found) == {"decode", "forward", "extra", "size"}
    assert {name for name, fn in found.items() if undocumented(Sub, name, fn)} \
        == {"forward", "extra", "size"}


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
