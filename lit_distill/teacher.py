"""The frozen teacher: loaded and frozen at construction, kept in eval mode, left out of checkpoints unless asked
(it is reloaded from where it came from), kept away from DDP's gradient machinery, and the trained-weights rule.

The trained-weights rule: a model handed over in Python is trusted as it is (trained in the same script, filled
with ``load_state_dict``, taken from a checkpoint, pretrained, or set by hand). A model that a recipe builds from its
YAML config (the command line marks it, :func:`mark_built_from_config`) must get weights from somewhere lit-distill
sees — a checkpoint option, a model that loads itself, or a checkpoint that holds it — or it is refused before any
compute, unless the recipe opts in with ``allow_untrained_teacher: true``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from lit_distill.sharding.fill import WeightSource
from lit_distill.weights import has_meta_parameters, load_weights, mark_weights, parse_dtype, weights_source

TEACHER_PREFIX = "teacher."
_FROM_CONFIG = "_lit_distill_built_from_config"


def freeze(model: nn.Module) -> nn.Module:
    """Switch off gradients and put ``model`` in eval mode; returns it."""
    model.requires_grad_(False)
    model.eval()
    return model


def load_or_defer(model: nn.Module, path: str | Path | None, prefix: str | None = None) -> WeightSource | None:
    """Load ``path`` into ``model`` now; or, when ``model`` was built without memory (meta parameters), return the
    source to fill it from once it is placed (shard by shard), marking the model as coming with those weights."""
    if path is None:
        return None
    if not has_meta_parameters(model):
        load_weights(model, path, prefix=prefix)
        return None
    source = WeightSource.matching(path, model, prefix)
    mark_weights(model, path)
    return source


def load_teacher(
    teacher: nn.Module | None,
    student: nn.Module,
    checkpoint: str | None = None,
    prefix: str | None = None,
    dtype: str | None = None,
) -> WeightSource | None:
    """Load ``teacher``'s weights from ``checkpoint`` (if given), check it shares nothing with the student, cast it
    to ``dtype`` (if given) and freeze it. ``checkpoint`` without a teacher is an error.

    A teacher built without memory (meta parameters, see :mod:`lit_distill.sharding`) is not loaded here: the
    returned source is read later, shard by shard, once the teacher is placed (``configure_model``).

    Example:
        >>> teacher = nn.Linear(2, 1)
        >>> load_teacher(teacher, nn.Linear(2, 1), dtype="bf16")
        >>> teacher.weight.dtype, teacher.weight.requires_grad, teacher.training
        (torch.bfloat16, False, False)
    """
    if checkpoint is not None and teacher is None:
        raise ValueError("teacher_checkpoint is set but no teacher model is given; add `teacher:`.")
    if teacher is None:
        return None
    deferred = load_or_defer(teacher, checkpoint, prefix)
    check_not_shared(student, teacher)
    target = parse_dtype(dtype)
    if target is not None:
        teacher.to(target)
    freeze(teacher)
    return deferred


def check_not_shared(student: nn.Module, teacher: nn.Module) -> None:
    """Freezing the teacher must not freeze the student: no parameter may belong to both."""
    if student is teacher:
        raise ValueError("student and teacher are the same module object; build two separate models.")
    teacher_ids = {id(p) for p in teacher.parameters()}
    shared = [n for n, p in student.named_parameters() if id(p) in teacher_ids]
    if shared:
        raise ValueError(
            f"student shares {len(shared)} parameter(s) with the teacher (e.g. {shared[:3]}); freezing the "
            "teacher would freeze them too. Copy the weights (copy.deepcopy) instead of sharing them."
        )


def ddp_ignore_list(teacher: nn.Module) -> list[str]:
    """Names DDP should neither all-reduce nor broadcast: every rank loads the same teacher itself.

    Example:
        >>> ddp_ignore_list(nn.Linear(2, 1))
        ['teacher.weight', 'teacher.bias']
    """
    return [TEACHER_PREFIX + k for k in teacher.state_dict()]


# ------------------------------------------------------------------------------------------ trained-weights rule
def mark_built_from_config(model: nn.Module | None) -> None:
    """Record that ``model`` was built by a recipe from its config (the command line does this), so that the
    trained-weights rule applies to it; a model made in Python is never marked."""
    if model is not None:
        setattr(model, _FROM_CONFIG, True)


def require_trained(
    model: nn.Module | None, role: str, allowed: bool, option: str, checkpoint_option: str = "teacher_checkpoint"
) -> None:
    """Refuse a model a recipe built from its config when nothing loaded weights into it (see the module docstring).

    Args:
        model: the teacher (or the model that generates).
        role: its key in the recipe (``"teacher"``, ``"model"``).
        allowed: the recipe's opt-in for random weights.
        option: the name of that opt-in in the recipe, for the message.
        checkpoint_option: the recipe key that loads its weights from a file, for the message.

    Example:
        >>> require_trained(nn.Linear(2, 2), "teacher", allowed=False, option="allow_untrained_teacher")
    """
    if model is None or allowed or not getattr(model, _FROM_CONFIG, False) or weights_source(model):
        return
    raise ValueError(
        f"the {role} ({type(model).__name__}) is built from the recipe's config (model.init_args.{role}) and no "
        f"weights are loaded into it, so it is a random model. Give it trained weights: {checkpoint_option} (a "
        ".ckpt or .safetensors file), a model that loads its own (HFCausalLM path=..., SentenceEncoder path=..., "
        f"GPT.from_pretrained), or set {option}: true if a random {role} is what you want."
    )


class TeacherLifecycle:
    """Mixin (before ``LightningModule``) for a module with a ``teacher`` submodule and a ``save_teacher`` flag: the
    teacher stays in eval mode, is left out of ``state_dict`` unless ``save_teacher``, is put back on
    ``load_state_dict``, follows the trained-weights rule, and a student trained here counts as trained (it may
    teach another module).

    Example:
        >>> from lightning.pytorch import LightningModule
        >>> class Pair(TeacherLifecycle, LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.student, self.teacher, self.save_teacher = nn.Linear(2, 1), nn.Linear(2, 1), False
        >>> sorted(Pair().state_dict())
        ['student.bias', 'student.weight']
    """

    teacher: nn.Module | None
    student: nn.Module
    save_teacher: bool

    def train(self, mode: bool = True) -> Any:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # Lightning calls .train() on the whole module every epoch
        return self

    def check_teacher_weights(self) -> None:
        """The trained-weights rule for the teacher (``allow_untrained_teacher`` opts out). It runs at ``setup``,
        before any compute; with ``save_teacher`` a checkpoint (``ckpt_path``) may still bring the weights, so then it
        runs once Lightning has restored it, at the start of fit, validation or test."""
        require_trained(
            self.teacher, "teacher", getattr(self, "allow_untrained_teacher", False), "allow_untrained_teacher"
        )

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate", "test") and not self.save_teacher:
            self.check_teacher_weights()

    def on_fit_start(self) -> None:
        if self.save_teacher:
            self.check_teacher_weights()

    def on_validation_start(self) -> None:
        if self.save_teacher:
            self.check_teacher_weights()

    def on_test_start(self) -> None:
        if self.save_teacher:
            self.check_teacher_weights()

    def on_train_end(self) -> None:
        if self.trainer.global_step > 0:  # a model trained here may serve as the teacher of another module
            mark_weights(self.student, f"training by {type(self).__name__}")

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().state_dict(*args, **kwargs)
        if self.save_teacher:
            return state
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        drop = prefix + TEACHER_PREFIX
        for key in [k for k in state if k.startswith(drop)]:
            del state[key]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        has_teacher = any(k.startswith(TEACHER_PREFIX) for k in state_dict)
        if self.teacher is not None and not has_teacher:
            # The checkpoint left the teacher out; it was already reloaded from its own source.
            state_dict = dict(state_dict)
            state_dict.update({TEACHER_PREFIX + k: v for k, v in self.teacher.state_dict().items()})
        trainer = getattr(self, "_trainer", None)  # set while Lightning restores --ckpt_path
        check_same_model(state_dict, super().state_dict(keep_vars=True), strict, getattr(trainer, "ckpt_path", None))
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if self.teacher is not None and has_teacher:
            mark_weights(self.teacher, "a checkpoint saved with save_teacher")
        return result


def check_same_model(state: Mapping[str, Any], own: Mapping[str, Any], strict: bool, source: Any = None) -> None:
    """A checkpoint of another model (a teacher's, another student's) is named as such, with the first parameters
    whose shapes differ, instead of torch's bare size-mismatch error."""
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs this run {tuple(own[k].shape)}"
        for k in own.keys() & state.keys()
        if hasattr(state[k], "shape") and hasattr(own[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    missing = sorted(own.keys() - state.keys()) if strict else []
    if shapes or missing:
        detail = f"shapes differ ({sorted(shapes)[:3]})" if shapes else f"it lacks {missing[:3]}"
        raise ValueError(
            f"the checkpoint{f' {str(source)!r}' if source else ''} belongs to a different model than this run's: "
            f"{detail}. Resume with a checkpoint "
            "written by this recipe (--ckpt_path), or load a teacher's weights with teacher_checkpoint instead."
        )
