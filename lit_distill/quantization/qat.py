"""Fake quantization on a model (prepare), switched on and off, and real quantization (convert, or PTQ).

torchao's QAT swaps each chosen ``nn.Linear`` for a ``FakeQuantizedLinear``: the same parameters under the same
names (so checkpoints, optimizers, DDP and FSDP see no difference), whose forward rounds the weights (and, for
dynamic schemes, the activations) to the scheme's grid with a straight-through gradient. Converting swaps them back
and quantizes the weights for real, with exactly the rounding the training saw.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatch

from torch import nn

from lit_distill.quantization.schemes import Scheme, get_scheme, require_torchao

__all__ = [
    "convert_qat",
    "fake_quantized_layers",
    "layers_to_quantize",
    "prepare_qat",
    "quantize_model",
    "set_fake_quant",
]


def _output_head(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if callable(getter) else None


def layers_to_quantize(
    model: nn.Module, scheme: Scheme, group_size: int = 32, quantize_head: bool = False, skip: Iterable[str] = ()
) -> list[str]:
    """Names of the ``nn.Linear`` layers ``scheme`` quantizes in ``model``.

    The LM head (``get_output_embeddings``) and any linear layer sharing its weight with an embedding stay in full
    precision unless ``quantize_head``: the head is the layer most sensitive to rounding and, tied, it is the
    embedding too. ``skip`` takes module-name patterns (``fnmatch``: ``"blocks.0.*"``) to keep as they are.

    Raises:
        ValueError: a grouped scheme's ``group_size`` does not divide a layer's input width (naming the layers and
            the widths that would), or nothing is left to quantize.
    """
    head = _output_head(model)
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    patterns = list(skip)
    names = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and not any(fnmatch(name, p) for p in patterns)
        and (quantize_head or (m is not head and id(m.weight) not in embedded))
    ]
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer for {scheme.name!r} to quantize (the LM head is left out "
            f"unless quantize_head; skip={patterns})."
        )
    if scheme.grouped:
        widths = {name: model.get_submodule(name).in_features for name in names}
        bad = {name: w for name, w in widths.items() if w % group_size}
        if bad:
            listed = ", ".join(f"{n} ({w})" for n, w in list(bad.items())[:5])
            raise ValueError(
                f"group_size={group_size} does not divide the input width of {len(bad)} layer(s): {listed}; choose a "
                f"group_size that divides every width (e.g. 16 or 32) or leave those layers out with skip."
            )
    return names


def _by_name(names: Iterable[str]):
    chosen = set(names)
    return lambda module, fqn: fqn in chosen


def prepare_qat(
    model: nn.Module, scheme: Scheme, group_size: int = 32, quantize_head: bool = False, skip: Iterable[str] = ()
) -> list[str]:
    """Swap the layers :func:`layers_to_quantize` picks for fake-quantized ones, in place; returns their names.

    Call it before the optimizer exists (the parameters are the same objects, but an optimizer made before would
    not be wrong either) and before any DDP/FSDP wrapping. Works on a model on the meta device (weights filled later
    keep their names).

    Example:
        >>> from lit_distill.quantization.schemes import get_scheme
        >>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        >>> prepare_qat(model, get_scheme("int8_dynamic_int4_weight"))
        ['0']
    """
    require_torchao()
    from torchao.quantization import quantize_

    names = layers_to_quantize(model, scheme, group_size, quantize_head, skip)
    quantize_(model, scheme.prepare_config(group_size), filter_fn=_by_name(names))
    return names


def fake_quantized_layers(model: nn.Module) -> list[str]:
    """Names of the fake-quantized layers in ``model`` (empty when it was never prepared)."""
    from torchao.quantization.qat import FakeQuantizedLinear

    return [name for name, m in model.named_modules() if isinstance(m, FakeQuantizedLinear)]


def set_fake_quant(model: nn.Module, enabled: bool) -> None:
    """Turn the rounding of every fake-quantized layer on or off (off: the layer computes in full precision)."""
    from torchao.quantization.qat import FakeQuantizedLinear

    for m in model.modules():
        if isinstance(m, FakeQuantizedLinear):
            for quantizer in (m.activation_fake_quantizer, m.weight_fake_quantizer):
                if quantizer is not None:
                    quantizer.enabled = enabled


def convert_qat(model: nn.Module, scheme: Scheme, group_size: int = 32) -> nn.Module:
    """Replace each fake-quantized layer by its quantized counterpart (same rounding), in place; returns ``model``."""
    require_torchao()
    from torchao.quantization import quantize_
    from torchao.quantization.qat import FakeQuantizedLinear

    if not fake_quantized_layers(model):
        raise ValueError(f"{type(model).__name__} has no fake-quantized layer to convert; prepare it with prepare_qat.")
    set_fake_quant(model, True)
    quantize_(model, scheme.convert_config(group_size), filter_fn=lambda m, _: isinstance(m, FakeQuantizedLinear))
    return model


def quantize_model(
    model: nn.Module,
    scheme: str | Scheme,
    group_size: int = 32,
    quantize_head: bool = False,
    skip: Iterable[str] = (),
) -> list[str]:
    """Post-training quantization (PTQ) of ``model``'s ``nn.Linear`` layers in place; returns their names.

    On a model trained with fake quantization of the same scheme and ``group_size``, this is exactly its
    conversion: quantizing the trained full-precision weights gives the integers the training rounded to. A model
    that is still fake-quantized is converted (:func:`convert_qat`). Write the result with
    :func:`~lit_distill.quantization.save_quantized`.

    Args:
        model: the model, quantized in place (on the device and in the dtype it should run in).
        scheme: ``int8_dynamic_int4_weight`` (8da4w), ``int4_weight_only``, ``int8_weight_only`` or
            ``int8_dynamic_int8_weight``.
        group_size: input features sharing one scale (int4 schemes); must divide every quantized layer's width.
        quantize_head: quantize the LM head (``get_output_embeddings``) and linear layers tied to an embedding too.
        skip: module-name patterns (``fnmatch``: ``"blocks.0.*"``) left in full precision.

    Raises:
        ValueError: an unknown scheme, a ``group_size`` that does not divide a layer's width, or no layer to quantize.

    Example:
        >>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        >>> quantize_model(model, "int4_weight_only", group_size=32)
        ['0', '2']
        >>> type(model[0].weight).__name__
        'IntxUnpackedToInt8Tensor'
    """
    require_torchao()
    from torchao.quantization import quantize_

    scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme
    prepared = fake_quantized_layers(model)
    if prepared:
        convert_qat(model, scheme, group_size)
        return prepared
    names = layers_to_quantize(model, scheme, group_size, quantize_head, skip)
    quantize_(model, scheme.config(group_size), filter_fn=_by_name(names))
    return names
