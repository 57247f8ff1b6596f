"""Feature strategies: FitNets hints with trainable adapters, hidden-state MSE and cosine.

Layers are named by module path (``"stage2"``, ``"body.1"``, ``"blocks.3:input"``); the
:class:`~lit_distill.DistillationModule` hooks them and hands the tensors over in ``ModelOutput.features``.
Every strategy takes one layer pair or a list of pairs (a layer mapping) with optional per-pair weights
(the adapter-free AT, RKD and PKT live in :mod:`lit_distill.losses.relation`):

.. code-block:: yaml

    - class_path: lit_distill.losses.HintLoss
      init_args: {student_layer: [stage1, stage2], teacher_layer: [stage1, stage2], layer_weights: [0.5, 1.0]}
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from lit_distill.losses import functional as LF
from lit_distill.losses.base import DistillationLoss
from lit_distill.losses.logit import require_logits
from lit_distill.outputs import ModelOutput

Adapter = Literal["auto", "conv", "linear", "none"]
Layers = str | list[str] | None


def _as_list(value: Any, n: int, what: str) -> list:
    items = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(items) != n:
        raise ValueError(f"{what} has {len(items)} entries but there are {n} layer pairs; give one per pair.")
    return items


def _token_mask(batch: Any, feature: Tensor) -> Tensor | None:
    """The batch's ``attention_mask`` for ``[B, T, H]`` token features, so padding is not matched."""
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    if mask is None or feature.ndim != 3 or mask.shape != feature.shape[:2]:
        return None
    return mask.to(torch.bool)


class FeaturePairLoss(DistillationLoss):
    """Base of the feature strategies: ``Σ_pairs w_k · pair_loss(student[s_k], teacher[t_k])``.

    A layer of ``None`` means the model's logits. With one pair the strategy returns a scalar; with
    several it returns one term per pair (``<name>/<student>_to_<teacher>``, already weighted).

    Args:
        student_layer: student module path(s), one per pair.
        teacher_layer: teacher module path(s), one per pair.
        layer_weights: weight of each pair (default 1 each).
        weight: multiplier in the total loss.
        name: log name.

    Example (a subclass: one formula per pair)::

        class FeatureL1(FeaturePairLoss):
            def __init__(self, student_layer, teacher_layer, weight=1.0, name=None):
                super().__init__(student_layer, teacher_layer, None, weight, name or "feature_l1")

            def pair_loss(self, student_feature, teacher_feature, batch, index):
                return (student_feature - teacher_feature).abs().mean()
    """

    def __init__(
        self, student_layer: Layers, teacher_layer: Layers, layer_weights: list[float] | None, weight: float, name: str
    ) -> None:
        super().__init__(weight=weight, name=name)
        lists = [x for x in (student_layer, teacher_layer) if isinstance(x, (list, tuple))]
        n = len(lists[0]) if lists else 1
        if n == 0:
            raise ValueError(f"loss {self.name!r}: the layer lists are empty; name at least one layer pair.")
        self.student_layers = _as_list(student_layer, n, "student_layer")
        self.teacher_layers = _as_list(teacher_layer, n, "teacher_layer")
        weights = 1.0 if layer_weights is None else layer_weights
        self.layer_weights = [float(w) for w in _as_list(weights, n, "layer_weights")]
        for w in self.layer_weights:
            LF.check_nonnegative("layer_weights entry", w)
        self.student_taps = list(dict.fromkeys(s for s in self.student_layers if s is not None))
        self.teacher_taps = list(dict.fromkeys(t for t in self.teacher_layers if t is not None))

    def pair_label(self, i: int) -> str:
        s, t = self.student_layers[i] or "logits", self.teacher_layers[i] or "logits"
        return f"{s}_to_{t}".replace(":", "_")

    def _feature(self, out: ModelOutput | None, spec: str | None, side: str) -> Tensor:
        if spec is None:
            return require_logits(out, side, self)
        if out is None or spec not in out.features:
            raise ValueError(
                f"loss {self.name!r}: the {side} feature {spec!r} was not captured. Run the loss inside "
                f"DistillationModule (it hooks `{side}_taps`), or fill ModelOutput.features[{spec!r}] yourself."
            )
        return out.features[spec]

    def pair_loss(self, i: int, student: Tensor, teacher: Tensor, batch: Any) -> Tensor | dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Any) -> Tensor | dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        n = len(self.student_layers)
        for i, w in enumerate(self.layer_weights):
            s = self._feature(student, self.student_layers[i], "student")
            t = self._feature(teacher, self.teacher_layers[i], "teacher")
            value = self.pair_loss(i, s, t, batch)
            parts = value if isinstance(value, dict) else {"": value}
            for key, term in parts.items():
                label = "/".join(k for k in (self.pair_label(i) if n > 1 else "", key) if k)
                terms[label] = w * term
        return terms[""] if list(terms) == [""] else terms


class HintLoss(FeaturePairLoss):
    """FitNets hint loss (Romero et al. 2015): ``mean((r(u) − v)²)``, ``r`` a trainable adapter.

    The adapter is a 1x1 convolution for ``[B, C, H, W]`` features and a linear map on the last dim for
    ``[B, D]`` / ``[B, T, D]`` ones. Its size is read from the first batch (the module's probe batch, before
    the optimizer is built) or given as ``student_channels``/``teacher_channels``. It is trained and
    checkpointed with the student and left out of the exported student weights. Token features ignore
    padding through the batch's ``attention_mask``.

    Args:
        student_layer: student module path(s).
        teacher_layer: teacher module path(s), one per student layer.
        layer_weights: weight of each pair.
        adapter: ``auto`` (an adapter only where widths differ), ``conv``/``linear`` (always), ``none``;
            None takes the class default (``auto`` here, ``none`` for HiddenMSE/HiddenCosine).
        student_channels: adapter input width(s); with ``teacher_channels`` builds the adapters at once.
        teacher_channels: adapter output width(s).
        weight: multiplier in the total loss.
        name: log name (default ``hint``).

    Example (YAML)::

        - class_path: lit_distill.losses.HintLoss
          init_args: {student_layer: stage2, teacher_layer: stage2, weight: 1.0}
    """

    default_name = "hint"
    default_adapter: Adapter = "auto"

    def __init__(
        self,
        student_layer: str | list[str],
        teacher_layer: str | list[str],
        layer_weights: list[float] | None = None,
        adapter: Adapter | None = None,
        student_channels: int | list[int] | None = None,
        teacher_channels: int | list[int] | None = None,
        weight: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(student_layer, teacher_layer, layer_weights, weight, name or self.default_name)
        adapter = self.default_adapter if adapter is None else adapter
        if adapter not in ("auto", "conv", "linear", "none"):
            raise ValueError(f"loss {self.name!r}: adapter must be auto, conv, linear or none, got {adapter!r}.")
        if None in self.student_layers or None in self.teacher_layers:
            raise ValueError(f"loss {self.name!r}: name both student_layer and teacher_layer for every pair.")
        self.adapter = adapter
        self.adapters = nn.ModuleDict()
        # Follows .to(device/dtype) of the module, so adapters restored from a checkpoint land where it lives.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)
        if (student_channels is None) != (teacher_channels is None):
            raise ValueError(f"loss {self.name!r}: give both student_channels and teacher_channels, or neither.")
        if student_channels is not None:
            if adapter not in ("conv", "linear"):
                raise ValueError(
                    f"loss {self.name!r}: student_channels/teacher_channels need adapter: conv or linear (the "
                    f"kind cannot be known before the first batch), got adapter: {adapter}."
                )
            n = len(self.student_layers)
            for i, (c_in, c_out) in enumerate(
                zip(
                    _as_list(student_channels, n, "student_channels"), _as_list(teacher_channels, n, "teacher_channels")
                )
            ):
                self.adapters[str(i)] = self._build(adapter, int(c_in), int(c_out))

    @staticmethod
    def _build(kind: str, c_in: int, c_out: int, bias: bool = True, **factory: Any) -> nn.Module:
        if kind == "conv":
            return nn.Conv2d(c_in, c_out, kernel_size=1, bias=bias, **factory)
        return nn.Linear(c_in, c_out, bias=bias, **factory)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # Adapters sized on the first batch do not exist in a fresh module: build them from the checkpoint's
        # shapes so load_state_dict (strict) and resuming work before any forward pass.
        head = prefix + "adapters."
        for key, value in state_dict.items():
            idx = key[len(head) : -len(".weight")]
            if key.startswith(head) and key.endswith(".weight") and idx.isdigit() and idx not in self.adapters:
                kind = "conv" if value.ndim == 4 else "linear"
                bias = f"{head}{idx}.bias" in state_dict
                factory = {"device": self._anchor.device, "dtype": self._anchor.dtype}
                self.adapters[idx] = self._build(kind, value.shape[1], value.shape[0], bias, **factory)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _adapt(self, i: int, s: Tensor, t: Tensor) -> Tensor:
        conv = s.ndim == 4
        if s.ndim not in (2, 3, 4) or s.ndim != t.ndim:
            raise ValueError(
                f"loss {self.name!r} pair {self.pair_label(i)}: student feature {tuple(s.shape)} and teacher "
                f"feature {tuple(t.shape)} must both be [B, D], [B, T, D] or [B, C, H, W]."
            )
        if conv and s.shape[2:] != t.shape[2:]:
            raise ValueError(
                f"loss {self.name!r} pair {self.pair_label(i)}: student spatial size {tuple(s.shape[2:])} differs "
                f"from the teacher's {tuple(t.shape[2:])}; a 1x1 adapter does not resize, pair layers of equal "
                "resolution."
            )
        c_s, c_t = (s.shape[1], t.shape[1]) if conv else (s.shape[-1], t.shape[-1])
        key = str(i)
        if key not in self.adapters:
            if self.adapter == "none" or (self.adapter == "auto" and c_s == c_t):
                if c_s != c_t or s.shape[:-1] != t.shape[:-1]:
                    raise ValueError(
                        f"loss {self.name!r} pair {self.pair_label(i)}: student feature {tuple(s.shape)} does not "
                        f"match teacher feature {tuple(t.shape)} and there is no adapter; set `adapter: auto` "
                        f"(or conv/linear) on {type(self).__name__} to learn a {c_s}->{c_t} projection."
                    )
                return s
            kind = self.adapter if self.adapter != "auto" else ("conv" if conv else "linear")
            if (kind == "conv") != conv:
                raise ValueError(
                    f"loss {self.name!r} pair {self.pair_label(i)}: adapter: {kind} cannot map a {s.ndim}-D "
                    f"feature {tuple(s.shape)}; use adapter: {'conv' if conv else 'linear'} (or auto)."
                )
            if torch.is_grad_enabled():
                raise RuntimeError(
                    f"loss {self.name!r}: the adapter of pair {self.pair_label(i)} would be created inside a "
                    "gradient step, after the optimizer was built, and would never train. DistillationModule "
                    "builds adapters on its probe batch in setup('fit'); otherwise set student_channels and "
                    "teacher_channels with adapter: conv or linear."
                )
            # Autocast features are low precision while parameters must stay fp32.
            autocast = torch.is_autocast_enabled(s.device.type)
            dtype = self._anchor.dtype if autocast or not s.is_floating_point() else s.dtype
            self.adapters[key] = self._build(kind, c_s, c_t, device=s.device, dtype=dtype)
        module = self.adapters[key]
        if (isinstance(module, nn.Conv2d)) != conv:
            raise ValueError(
                f"loss {self.name!r} pair {self.pair_label(i)}: a {type(module).__name__} adapter cannot map a "
                f"{s.ndim}-D feature; use adapter: {'conv' if conv else 'linear'}."
            )
        c_in = module.in_channels if conv else module.in_features
        if c_in != c_s:
            raise ValueError(
                f"loss {self.name!r} pair {self.pair_label(i)}: the adapter expects width {c_in} but the student "
                f"feature has {c_s}; fix student_channels."
            )
        return module(s)

    def pair_loss(self, i: int, student: Tensor, teacher: Tensor, batch: Any) -> Tensor:
        return LF.hint_mse(self._adapt(i, student, teacher), teacher, mask=_token_mask(batch, teacher))


class HiddenMSE(HintLoss):
    """Hidden-state MSE ``mean((P·h_s − h_t)²)``, projection ``P`` optional (``adapter: auto``), as in FitNets.

    Same as :class:`HintLoss` but with no adapter by default, for students as wide as their teacher
    (TinyBERT/MiniLM-style layer matching). Token features skip padding via ``attention_mask``.
    Args as :class:`HintLoss`; default name ``hidden_mse``, default ``adapter: none``.

    Example:
        >>> mse = HiddenMSE(student_layer="blocks.1", teacher_layer="blocks.3")
        >>> s = ModelOutput(features={"blocks.1": torch.randn(2, 5, 16)})
        >>> t = ModelOutput(features={"blocks.3": torch.randn(2, 5, 16)})
        >>> mse(s, t, {}).shape
        torch.Size([])
    """

    default_name = "hidden_mse"
    default_adapter: Adapter = "none"


class HiddenCosine(HiddenMSE):
    """Hidden-state cosine distance ``mean(1 − cos(P·h_s, h_t))`` (DistilBERT, Sanh et al. 2019).

    Vectors are the last dim of ``[B, T, H]``/``[B, D]`` features and the channels of ``[B, C, H, W]``.
    Args as :class:`HintLoss`; default name ``hidden_cosine``, default ``adapter: none``.

    Example:
        >>> cosine = HiddenCosine(student_layer="blocks.1", teacher_layer="blocks.3")
        >>> h = torch.randn(2, 5, 16)
        >>> float(cosine(ModelOutput(features={"blocks.1": h}), ModelOutput(features={"blocks.3": 2 * h}), {})) < 1e-6
        True
    """

    default_name = "hidden_cosine"

    def pair_loss(self, i: int, student: Tensor, teacher: Tensor, batch: Any) -> Tensor:
        s = self._adapt(i, student, teacher)
        return LF.feature_cosine(s, teacher, dim=1 if s.ndim == 4 else -1, mask=_token_mask(batch, teacher))
