"""Small reference models used by the default recipes."""

from lit_distill.models.cnn import SmallCNN
from lit_distill.models.gpt import GPT
from lit_distill.models.mlp import MLP

__all__ = ["MLP", "SmallCNN"]
__all__ += ["GPT", "HFCausalLM"]


def __getattr__(name: str):
    # transformers is an optional extra: import the Hugging Face wrapper only when it is asked for.
    if name == "HFCausalLM":
        from lit_distill.models.hf import HFCausalLM

        return HFCausalLM
    raise AttributeError(f"module 'lit_distill.models' has no attribute {name!r}")
