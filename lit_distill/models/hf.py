"""Hugging Face ``transformers`` models as lit-distill teachers/students, and exporting a trained student.

Needs the optional extra ``hf`` (``pip install 'lit-distill[hf]'``); ``transformers`` is imported only
when a model is built, so the rest of lit-distill works without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from lit_distill.data.tokenizers import looks_local, tokenizer_fingerprint
from lit_distill.export import is_writer
from lit_distill.models.gpt import GPT
from lit_distill.models.hf_loading import apply_kernels, build_from_config, import_transformers, missing_model_error
from lit_distill.outputs import ModelOutput
from lit_distill.sharding.fill import full_state_dict, is_sharded
from lit_distill.weights import parse_dtype


class HFCausalLM(nn.Module):
    """A ``transformers`` causal LM (``AutoModelForCausalLM``) or base model (``AutoModel``) from a folder or hub id.

    ``forward(input_ids, attention_mask=None)`` returns logits ``[B, T, V]`` (base models: a
    :class:`ModelOutput` with ``hidden`` only); ``forward_hidden`` the final hidden states; and
    ``get_output_embeddings`` the LM head, like :class:`~lit_distill.models.GPT`, so token KD and its fused
    path work unchanged. ``tokenizer_id`` (for the tokenizer check of :class:`~lit_distill.losses.TokenKD`)
    is, in order: the argument, ``config.tokenizer_id``, a fingerprint of the tokenizer saved beside the
    weights, or None.

    Args:
        path: local directory (``save_pretrained`` output) or hub id; offline hub ids must be cached.
        auto_class: ``"causal_lm"`` (``AutoModelForCausalLM``) or ``"base"`` (``AutoModel``, no head).
        dtype: load the weights in this dtype (``"bf16"``, ``"fp32"``, ...); None keeps the saved one.
        tokenizer_id: override the tokenizer identity.
        trust_remote_code: allow model code shipped with the checkpoint (off: it runs arbitrary code).
        config: build a randomly initialised model from a ``transformers`` config instead of loading one:
            ``{model_type: llama, hidden_size: 2048, ...}`` (no download; for measurements and tests).
        empty_init: build the model without memory (parameters on the meta device) and load the weights of
            ``path`` later, on the device, only the shard each rank owns under ``--trainer.strategy fsdp2``
            (whole on each device otherwise). For models that do not fit one device or one host's memory.
        kernels: ``"liger"`` runs RMSNorm, SwiGLU and rotary embeddings as fused Triton kernels (CUDA only; see
            :func:`~lit_distill.models.hf_loading.apply_kernels`): a faster eager step for Llama-family models.

    Example (YAML)::

        teacher:
          class_path: lit_distill.models.hf.HFCausalLM
          init_args: {path: checkpoints/text/hf_tiny/teacher}
    """

    def __init__(
        self,
        path: str | None = None,
        auto_class: Literal["causal_lm", "base"] = "causal_lm",
        dtype: str | None = None,
        tokenizer_id: str | None = None,
        trust_remote_code: bool = False,
        config: dict[str, Any] | None = None,
        empty_init: bool = False,
        kernels: Literal["liger"] | None = None,
    ) -> None:
        super().__init__()
        tf = import_transformers()
        if auto_class not in ("causal_lm", "base"):
            raise ValueError(f"auto_class must be 'causal_lm' or 'base', got {auto_class!r}.")
        if (path is None) == (config is None):
            raise ValueError("give exactly one of `path` (a saved or hub model) and `config` (random weights).")
        if path is not None and looks_local(path) and not Path(path).expanduser().exists():
            raise missing_model_error(path, None)  # say so at once instead of after the hub client's retries
        factory = tf.AutoModelForCausalLM if auto_class == "causal_lm" else tf.AutoModel
        self.path, self.auto_class, self.empty_init = path, auto_class, empty_init
        if config is not None or empty_init:
            self.model = build_from_config(tf, factory, path, config, dtype, trust_remote_code, empty_init)
        else:
            kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
            if dtype is not None:
                kwargs["dtype"] = parse_dtype(dtype)
            try:
                self.model = factory.from_pretrained(path, **kwargs)
            except OSError as err:
                raise missing_model_error(path, err) from err
        self.model.train(self.training)  # from_pretrained returns eval mode; behave like any freshly built module
        apply_kernels(self.model, kernels)
        self.kernels = kernels
        self.weights_source = path  # read by lit_distill.weights.weights_source (None: random weights)
        try:
            self.tokenizer = tf.AutoTokenizer.from_pretrained(path) if path is not None else None
        except (OSError, ValueError, TypeError):
            self.tokenizer = None  # weights without tokenizer files: identity falls back to the config
        if self.tokenizer is not None and len(self.tokenizer) <= 1:
            # Some transformers versions hand back an empty tokenizer for a folder without tokenizer files.
            self.tokenizer = None
        self.tokenizer_id = (
            tokenizer_id
            or getattr(self.model.config, "tokenizer_id", None)
            or (tokenizer_fingerprint(self.tokenizer) if self.tokenizer is not None else None)
        )
        self.vocab_size = len(self.tokenizer) if self.tokenizer is not None else int(self.model.config.vocab_size)
        self._hidden_checked = auto_class == "base"

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def block_size(self) -> int | None:
        """The longest sequence the config allows (``n_positions``/``max_position_embeddings``), if it says.

        On-policy sampling shortens samples of long prompts to stay within it, as for lit-distill's GPT.
        """
        for key in ("n_positions", "max_position_embeddings"):
            value = getattr(self.model.config, key, None)
            if isinstance(value, int):
                return value
        return None

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, return_hidden: bool = False
    ) -> Tensor | ModelOutput:
        """Logits ``[B, T, V]``; with ``return_hidden`` the final hidden states instead (see :meth:`forward_hidden`).

        Fused losses call ``model(..., return_hidden=True)`` rather than ``forward_hidden`` so that the call goes
        through the module's hooks: under FSDP those gather the sharded embedding and LM head.
        """
        if self.kernels is not None and not input_ids.is_cuda:
            raise ValueError(f"kernels: {self.kernels} runs on CUDA only; the inputs are on {input_ids.device.type}.")
        if self.auto_class == "base":
            return ModelOutput(hidden=self.forward_hidden(input_ids, attention_mask))
        if return_hidden:
            return self.forward_hidden(input_ids, attention_mask)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def forward_hidden(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Hidden states the LM head reads (after the final norm), ``[B, T, hidden]``."""
        hidden = self.body()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        if not self._hidden_checked:
            self._check_hidden_path(input_ids[:1], None if attention_mask is None else attention_mask[:1])
        return hidden

    def body(self) -> nn.Module:
        """The transformer without its LM head: what :meth:`forward_hidden` runs."""
        return self.model.base_model if self.auto_class == "causal_lm" else self.model

    @torch.no_grad()
    def _check_hidden_path(self, input_ids: Tensor, attention_mask: Tensor | None) -> None:
        # Fused losses assume logits == head(hidden); models that rescale or soft-cap logits break that.
        # Checked once, on one row, in eval mode so that dropout cannot make the two forwards differ.
        was_training = self.model.training
        self.model.eval()
        try:
            hidden = self.body()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
            again = self.get_output_embeddings()(hidden).float()
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
        finally:
            self.model.train(was_training)
        gap = float((logits - again).abs().max())
        if gap > 1e-2 * (1.0 + float(logits.abs().max())):
            raise ValueError(
                f"{type(self.model).__name__}: logits differ from lm_head(last hidden state) by {gap:.3g} (the model "
                "post-processes its logits), so fused token KD would be wrong. Set TokenKD(fused=false)."
            )
        self._hidden_checked = True

    def get_output_embeddings(self) -> nn.Module | None:
        return self.model.get_output_embeddings()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def materialize_weights(self, device: torch.device) -> None:
        """Fill an ``empty_init`` model on ``device``: this rank's shards of ``path``'s weights (``config``: random)."""
        from lit_distill.sharding.fill import WeightSource, materialize

        source = WeightSource(self.path) if self.path is not None else None
        # Tied embeddings stay one Parameter object through sharding and to_empty, so nothing is re-tied here.
        materialize(self.model, device, source, std=getattr(self.model.config, "initializer_range", 0.02))

    def save_pretrained(self, path: str | Path, state_dict: dict[str, Tensor] | None = None) -> Path:
        """Write the model (``config.json`` records ``tokenizer_id``) and its tokenizer, if any, to ``path``.

        ``state_dict``: weights to write instead of the module's own, keyed like ``self.model`` (what a sharded
        model gathers for export).
        """
        if self.tokenizer_id is not None:
            self.model.config.tokenizer_id = self.tokenizer_id
        self.model.save_pretrained(str(path), **({"state_dict": state_dict} if state_dict is not None else {}))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(path))
        return Path(path)


def export_pretrained(model: nn.Module | LightningModule, path: str | Path, overwrite: bool = False) -> Path:
    """Save a trained student for inference: ``save_pretrained`` for HF models, safetensors + config for GPT.

    Accepts the student itself or a :class:`~lit_distill.DistillationModule` (its ``student`` is saved).
    Reload with :func:`load_pretrained`. In a distributed run every rank calls it (a sharded student is gathered)
    and rank 0 writes.

    Example:
        >>> export_pretrained(GPT(n_layer=1, n_embd=16, n_head=2), "out/student")  # doctest: +SKIP
    """
    model = getattr(model, "student", model)
    folder = Path(path)
    if not isinstance(model, (GPT, HFCausalLM)) and not hasattr(model, "save_pretrained"):
        raise TypeError(f"cannot export {type(model).__name__}: expected GPT, HFCausalLM or a transformers model.")
    state = full_state_dict(model)  # a sharded student is gathered: every rank calls this, rank 0 writes
    if not is_writer():
        return folder
    # Checked by the writer alone: another rank would find the folder rank 0 has just written.
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{str(folder)!r} is not empty; pass overwrite=True or choose another folder.")
    if isinstance(model, GPT):
        return model.save_pretrained(folder, overwrite=True, state_dict=state)
    if isinstance(model, HFCausalLM):
        return model.save_pretrained(folder, state_dict={k.removeprefix("model."): v for k, v in state.items()})
    # a bare transformers PreTrainedModel, or another model with its own save_pretrained (sentence encoder)
    model.save_pretrained(str(folder), **({"state_dict": state} if is_sharded(model) else {}))
    return folder


def load_pretrained(path: str | Path, dtype: str | None = None) -> nn.Module:
    """Reload a folder written by :func:`export_pretrained` in eval mode (GPT or Hugging Face, by its config).

    Example:
        >>> student = load_pretrained("lightning_logs/version_0/student")  # doctest: +SKIP
    """
    config = Path(path) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{str(path)!r} has no config.json; expected a folder from export_pretrained.")
    if json.loads(config.read_text()).get("model_type") == "lit_distill.GPT":
        model: nn.Module = GPT.from_pretrained(path)
        if dtype is not None:
            model.to(parse_dtype(dtype))
    else:
        model = HFCausalLM(str(path), dtype=dtype)
    return model.eval()
