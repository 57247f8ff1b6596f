"""LoRA students (Hu et al. 2022) through ``peft``: a Hugging Face causal LM whose base weights stay frozen while
low-rank adapters train. Needs the optional extra ``lora`` (``pip install 'lit-distill[lora]'``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from lit_distill.models.hf import HFCausalLM


def _peft() -> Any:
    try:
        import peft
    except ImportError as err:
        raise ImportError("LoRA students need peft: pip install 'lit-distill[lora]'.") from err
    return peft


class LoRACausalLM(HFCausalLM):
    """:class:`~lit_distill.models.hf.HFCausalLM` with LoRA adapters: only the adapters are trainable.

    ``forward``, ``forward_hidden`` and ``get_output_embeddings`` behave as in ``HFCausalLM`` (token KD, its fused
    path and on-policy sampling work unchanged); the frozen base weights have ``requires_grad=False``, so they never
    reach the optimizer. :meth:`save_pretrained` (and so ``ExportPretrained``) writes the merged model to the folder
    (``AutoModelForCausalLM.from_pretrained`` loads it) and the adapter alone to ``<folder>/adapter``
    (``PeftModel.from_pretrained(base, "<folder>/adapter")`` loads it onto the base model).

    Args:
        path: the base model (local folder or hub id), as for ``HFCausalLM``.
        r: adapter rank.
        alpha: LoRA scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapter input.
        target_modules: module names to adapt; None = peft's default for the architecture (GPT-2: ``c_attn``;
            Llama: ``q_proj``, ``v_proj``).
        adapter: a saved adapter folder to start from (trained further) instead of fresh adapters.
        dtype: load the base weights in this dtype.
        tokenizer_id: override the tokenizer identity.
        trust_remote_code: allow model code shipped with the checkpoint.

    Example (YAML)::

        student:
          class_path: lit_distill.models.lora.LoRACausalLM
          init_args: {path: checkpoints/text/hf_tiny/student, r: 8, alpha: 16}
    """

    def __init__(
        self,
        path: str,
        r: int = 8,
        alpha: int = 16,
        dropout: float = 0.0,
        target_modules: list[str] | None = None,
        adapter: str | None = None,
        dtype: str | None = None,
        tokenizer_id: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        peft = _peft()
        if not (isinstance(r, int) and r >= 1):
            raise ValueError(f"r (the LoRA rank) must be an integer >= 1, got {r!r}.")
        super().__init__(path, dtype=dtype, tokenizer_id=tokenizer_id, trust_remote_code=trust_remote_code)
        if adapter is not None:
            if not (Path(adapter) / "adapter_config.json").is_file():
                raise FileNotFoundError(f"adapter folder {adapter!r} has no adapter_config.json (a PeftModel save).")
            self.model = peft.PeftModel.from_pretrained(self.model, adapter, is_trainable=True)
        else:
            config = peft.LoraConfig(
                task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules
            )
            self.model = peft.get_peft_model(self.model, config)
        self.model.train(self.training)

    def body(self) -> nn.Module:
        return self.model.get_base_model().base_model

    def save_pretrained(self, path: str | Path, state_dict: dict[str, Tensor] | None = None) -> Path:
        """The merged model in ``path`` (tokenizer included) and the adapter alone in ``path/adapter``.

        ``state_dict``: the weights to write, keyed like ``self.model`` (``export_pretrained`` passes a CPU copy).
        """
        folder = Path(path)
        model = copy.deepcopy(self.model)  # a copy: the training model keeps its adapters
        if state_dict is not None:
            model.load_state_dict(state_dict)
        if self.tokenizer_id is not None:
            model.config.tokenizer_id = self.tokenizer_id
        model.save_pretrained(str(folder / "adapter"))
        model.merge_and_unload().save_pretrained(str(folder))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(folder))
        return folder
