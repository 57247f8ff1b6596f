"""Old module paths of moved modules still import for one release: same objects, and a warning naming the new path."""

import importlib
import sys
import warnings

import pytest

from lit_distill._deprecated import MOVED

OLD_NAMES = {  # what each old module offered, written out here rather than read from MOVED
    "lit_distill.callbacks_embedding": ["EmbeddingEval", "compare_encoders", "quantize_int8", "neighbour_agreement"],
    "lit_distill.callbacks_generation": ["JsonlPredictionWriter"],
    "lit_distill.generation_module": ["GenerationModule"],
    "lit_distill.onpolicy": ["OnPolicyDistillationModule"],
    "lit_distill.losses.fused_triton": ["TRITON_CONFIG"],
}


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_old_path_imports_the_same_objects_and_warns(old, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)  # the warning comes once per process, on first import
    new = MOVED[old][0]
    with pytest.warns(DeprecationWarning, match=rf"{old} is deprecated .* import from {new} instead") as caught:
        __import__(old)  # like an import statement (importlib.import_module would be the reported caller)
    assert caught[0].filename == __file__  # the warning points at the import, not into importlib
    alias = sys.modules[old]
    target = importlib.import_module(new)
    for name in OLD_NAMES[old]:
        assert getattr(alias, name) is getattr(target, name)
    assert sorted(alias.__all__) == sorted(MOVED[old][1])


def test_from_import_of_an_old_name_works_and_new_paths_do_not_warn(monkeypatch):
    monkeypatch.delitem(sys.modules, "lit_distill.onpolicy", raising=False)
    with pytest.warns(DeprecationWarning, match="lit_distill.generation.onpolicy"):
        from lit_distill.onpolicy import OnPolicyDistillationModule
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        import lit_distill.callbacks.embedding  # noqa: F401
        import lit_distill.losses.fused.triton_kernel  # noqa: F401
        from lit_distill.generation import OnPolicyDistillationModule as new
    assert OnPolicyDistillationModule is new


def test_unknown_old_names_still_fail():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("lit_distill.callbacks_nothing")
