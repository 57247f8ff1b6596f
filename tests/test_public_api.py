"""The public names: one list per package (``__all__``), each importable and documented with an example, and a top
level that exports exactly the front door."""

import doctest
import importlib
import inspect
import sys
from pathlib import Path

import pytest

import lit_distill

ROOT = Path(lit_distill.__file__).parent
PACKAGES = sorted(
    ".".join(("lit_distill", *p.parent.relative_to(ROOT).parts)) for p in ROOT.rglob("__init__.py")
)  # fmt: skip
TOP = {"DistillationModule", "DistillationLoss", "LogitKD", "CrossEntropy", "ModelOutput"}


def test_the_top_level_exports_exactly_the_front_door():
    assert set(lit_distill.__all__) == TOP
    public = {n for n in dir(lit_distill) if not n.startswith("_") and not inspect.ismodule(getattr(lit_distill, n))}
    assert public == TOP
    assert not hasattr(lit_distill, "FeatureTaps")  # internal: lit_distill.features


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_imports_and_has_a_docstring_with_an_example(package):
    module = importlib.import_module(package)
    assert isinstance(getattr(module, "__all__", None), list), f"{package} has no __all__ list"
    assert len(set(module.__all__)) == len(module.__all__), f"{package}.__all__ lists a name twice"
    problems = []
    for name in module.__all__:
        value = getattr(module, name)  # imports lazily exported names too
        doc = (value.__doc__ or "").strip()
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            problems.append(f"{name}: a {type(value).__name__}, not a class or function")
        elif not doc:
            problems.append(f"{name}: no docstring")
        elif "Example" not in doc:
            problems.append(f"{name}: its docstring shows no example")
    assert not problems, f"{package}: " + "; ".join(problems)


@pytest.mark.parametrize("package", PACKAGES)
def test_the_examples_of_the_public_names_run(package, tmp_path, monkeypatch):
    """Each ``>>>`` example of a public name gives what it shows (``# doctest: +SKIP`` ones need a GPU or files)."""
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(package)
    failed = []
    for name in module.__all__:
        value = getattr(module, name)
        home = sys.modules[value.__module__]
        for test in doctest.DocTestFinder(recurse=False).find(value, name, module=home, globs=dict(vars(home))):
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
            if runner.run(test, out=failed.append).failed:
                failed.append(f"in {package}.{name}")
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize(
    ("package", "names"),
    [
        ("lit_distill.losses", {"InBatchContrastive"}),
        ("lit_distill.models", {"SentenceEncoder", "LoRACausalLM"}),
        ("lit_distill.data", {"SentencesDataModule"}),
        ("lit_distill.callbacks", {"ExportPretrained"}),
    ],
)
def test_classes_the_recipes_name_are_exported_by_their_package(package, names):
    assert names <= set(importlib.import_module(package).__all__)


def test_callbacks_export_callbacks_only():
    from lightning.pytorch import Callback

    from lit_distill import callbacks

    assert all(issubclass(getattr(callbacks, n), Callback) for n in callbacks.__all__)
