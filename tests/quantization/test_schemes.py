"""Scheme names, which schemes train, and the error when torchao is missing."""

import importlib.util

import pytest

from lit_distill.quantization.schemes import SCHEMES, get_scheme, require_torchao


def test_unknown_scheme_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown quantization scheme 'int3'.*int4_weight_only"):
        get_scheme("int3")


def test_the_issue_s_schemes_exist_and_train():
    for name in ("int8_dynamic_int4_weight", "int4_weight_only", "int8_weight_only"):
        assert SCHEMES[name].qat
        assert SCHEMES[name].prepare_config(32).step == "prepare"


def test_a_scheme_without_fake_quantization_is_refused_for_training_naming_the_alternatives():
    with pytest.raises(ValueError, match="int8_dynamic_int8_weight.*cannot be trained.*int4_weight_only"):
        get_scheme("int8_dynamic_int8_weight").prepare_config(32)


def test_missing_torchao_names_the_install_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'lit-distill\[quant\]'"):
        require_torchao()
