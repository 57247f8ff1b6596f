"""Building Hugging Face models for :class:`~lit_distill.models.hf.HFCausalLM`: importing ``transformers`` lazily,
clear errors for missing models, and models built from a config (random, or on the meta device)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from torch import nn

from lit_distill.data.tokenizers import TINY_HINT, looks_local
from lit_distill.weights import parse_dtype


def import_transformers() -> Any:
    """``transformers``, or an ImportError that names the extra to install."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError("Hugging Face models need transformers: pip install 'lit-distill[hf]'.") from err
    return transformers


def missing_model_error(path: str, err: Exception | None) -> FileNotFoundError:
    """The error for a model that cannot be found: a missing local folder, or a hub id offline or unreachable."""
    if looks_local(path) and not Path(path).expanduser().exists():
        hint = TINY_HINT if "hf_tiny" in path else ""
        return FileNotFoundError(f"Hugging Face model directory {path!r} does not exist.{hint}")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    why = "the hub is offline (HF_HUB_OFFLINE=1) and it is not in the local cache" if offline else "download failed"
    return FileNotFoundError(
        f"cannot load Hugging Face model {path!r}: no such local directory, and {why}. Give a local folder "
        f"(save_pretrained output), or fetch it once with network access. ({err})"
    )


def build_from_config(
    tf: Any, factory: Any, path: str | None, config: dict[str, Any] | None, dtype: str | None, trust: bool, empty: bool
) -> nn.Module:
    """A model from a config (``path``'s or the given one), on the meta device when ``empty``."""
    from lit_distill.sharding.fill import empty_parameters

    if config is not None:
        settings = dict(config)
        model_type = settings.pop("model_type", None)
        if model_type is None:
            raise ValueError("HFCausalLM(config=...) needs a `model_type` entry (e.g. llama, gpt2, qwen2).")
        cfg = tf.AutoConfig.for_model(model_type, **settings)
    else:
        try:
            cfg = tf.AutoConfig.from_pretrained(path, trust_remote_code=trust)
        except OSError as err:
            raise missing_model_error(str(path), err) from err
    kwargs: dict[str, Any] = {"trust_remote_code": trust}
    if dtype is not None:
        kwargs["dtype"] = parse_dtype(dtype)
    with empty_parameters() if empty else contextlib.nullcontext():
        return factory.from_config(cfg, **kwargs)


#: The fused kernel sets a model can run with, and what each needs.
KERNELS = ("liger",)


def apply_kernels(model: nn.Module, kernels: str | None) -> None:
    """Swap a ``transformers`` model's RMSNorm, SwiGLU MLP and rotary embedding for fused Triton kernels.

    ``"liger"``: Liger-Kernel's (``pip install 'lit-distill[liger]'``; CUDA only). In eager mode an HF Llama spends
    about a third of its GPU time in the small elementwise kernels of exactly these layers; ``compile`` fuses them
    too, so this is for runs that do not compile. The LM head and the loss stay lit-distill's: fused token KD reads
    the hidden states and the head itself. Liger patches the model's ``transformers`` module, so every model of
    that family in the process gets its rotary kernel.
    """
    if kernels is None:
        return
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {list(KERNELS)} or null, got {kernels!r}.")
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as err:
        raise ImportError(
            "kernels: liger needs the liger-kernel package (pip install 'lit-distill[liger]'; it runs on CUDA only)."
        ) from err
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    apply = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
    if apply is None:
        raise ValueError(
            f"Liger-Kernel has no kernels for model type {model_type!r} (it covers "
            f"{sorted(MODEL_TYPE_TO_APPLY_LIGER_FN)}); leave kernels unset for this model."
        )
    apply(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
