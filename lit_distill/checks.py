"""Checks a DistillationModule runs before any compute: each names the bad value and the fix."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from lit_distill.batch import cached_teacher_output
from lit_distill.guard import NonFiniteLossError
from lit_distill.losses.base import DistillationLoss


def check_losses(losses: list[DistillationLoss], teacher: nn.Module | None) -> list[DistillationLoss]:
    """Strategies only, at least one, unique names, a teacher where one is needed, not every weight 0."""
    if not losses:
        raise ValueError("losses is empty; give at least one strategy, e.g. LogitKD or CrossEntropy.")
    names: set[str] = set()
    for loss in losses:
        if not isinstance(loss, DistillationLoss):
            raise TypeError(
                f"losses must be DistillationLoss strategies, got {type(loss).__name__}; wrap plain "
                "functions in a DistillationLoss subclass."
            )
        if loss.requires_teacher and teacher is None:
            raise ValueError(
                f"loss {loss.name!r} ({type(loss).__name__}) needs a teacher but `teacher` is None; add a "
                "teacher (or `lit_distill.cache.CachedTeacher` with `CachedTeacherDataModule` to read a teacher "
                "cache), or use only teacher-free terms such as CrossEntropy."
            )
        if loss.name in names:
            raise ValueError(f"two losses are named {loss.name!r}; give one of them another `name:`.")
        names.add(loss.name)
    if all(loss.weight == 0 for loss in losses):
        raise ValueError("every loss weight is 0, so nothing would be trained; set a weight > 0.")
    return losses


def check_fit_start(module: Any) -> None:
    """What can only be checked once training starts: the teacher's placement and dtype, and that ``nan_policy:
    skip`` runs on a strategy where every rank can skip an update together (not FSDP2's sharded backward)."""
    check_teacher_placement(module.student, module.teacher, module.teacher_dtype)
    from lightning.pytorch.strategies import ModelParallelStrategy  # fsdp2 is one

    strategy = module.trainer.strategy
    if module.nan_policy == "skip" and isinstance(strategy, ModelParallelStrategy):
        raise ValueError(
            f"nan_policy: skip is not supported with {type(strategy).__name__}: a sharded backward cannot be skipped "
            "on every rank together. Use nan_policy: raise (the default), or --trainer.strategy ddp."
        )
    student_side = [module.student, module.losses]
    if module.teacher is not None and all(m.training for part in student_side for m in part.modules()):
        # The frozen teacher is in eval mode on purpose; Lightning's warning would only alarm users.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


def check_teacher_placement(student: nn.Module, teacher: nn.Module | None, teacher_dtype: torch.dtype | None) -> None:
    """The teacher must sit where the student is, in the dtype configured for it."""
    if teacher is None:
        return
    teacher_param = next(teacher.parameters(), None)
    student_param = next(student.parameters(), None)
    if teacher_param is None or student_param is None:
        return
    if teacher_param.device != student_param.device:
        raise RuntimeError(
            f"teacher is on {teacher_param.device} but the student is on {student_param.device}; do not move the "
            "teacher by hand: Lightning places the whole module (use --trainer.accelerator/devices)."
        )
    if teacher_dtype is not None and teacher_param.dtype != teacher_dtype:
        raise RuntimeError(
            f"teacher_dtype is {teacher_dtype} but the teacher's weights are {teacher_param.dtype}, probably "
            "converted by a '-true' trainer precision; use a '-mixed' precision or set teacher_dtype to match."
        )


def check_models(losses: Iterable[Any], student: nn.Module, teacher: nn.Module | None, datamodule: Any = None) -> None:
    """Each strategy's own cheap configuration checks (``check_models(student, teacher)``), before any compute; a
    strategy that reads the data's tokenizers (``connect_data``, cross-tokenizer KD) gets the data module first."""
    for loss in losses:
        connect = getattr(loss, "connect_data", None)
        if connect is not None and datamodule is not None:
            connect(datamodule)
        check = getattr(loss, "check_models", None)
        if check is not None:
            check(student, teacher)


def first_train_batch(trainer: Any) -> Any:
    """The first training batch (for the setup probe); an empty training set is an error, not a silent no-op."""
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None:
        loader = datamodule.train_dataloader()
    else:
        source = getattr(getattr(trainer, "fit_loop", None), "_data_source", None)
        if source is None or not source.is_defined():
            return None
        loader = source.dataloader()
    batch = next(iter(loader), None)
    if batch is None:
        size = len(loader.dataset) if hasattr(loader, "dataset") and hasattr(loader.dataset, "__len__") else "?"
        raise ValueError(
            f"the training dataloader yields no batch (dataset size {size}); check the data path/split settings, "
            "or batch_size with drop_last=True larger than the dataset."
        )
    return batch


def probe_first_batch(module: Any) -> bool:
    """Run one batch through teacher, student and every loss before training starts.

    Bad shapes, vocab mismatches and unknown names fail here, before any optimizer step, and
    adapters whose size is inferred from the first batch get their parameters, so the optimizer
    and DDP see them. Returns whether it ran (not without a training batch, nor before FSDP/DeepSpeed sharding).
    """
    with torch.device("cpu"):  # configure_model runs under the strategy's default-device context; data is CPU-made
        batch = first_train_batch(module.trainer)
    if batch is None:
        return False
    device = module.trainer.strategy.root_device
    if getattr(module.trainer.strategy, "strategy_name", "") in ("fsdp", "deepspeed"):
        return False  # the full model does not fit one device before sharding; checks run at step 1
    module.to(device)
    batch = module.trainer.strategy.batch_to_device(batch, device)
    was_training = module.training
    module.eval()  # a shape check must not move BatchNorm statistics
    module._probing = True  # ... but it takes the training step's path (hidden states for fused losses)
    try:
        with torch.no_grad():
            total, terms, _, _ = module.shared_step(batch)
    except (RuntimeError, IndexError, TypeError) as err:
        if type(err) not in (RuntimeError, IndexError, TypeError):
            raise  # e.g. out of memory: already says what it is
        raise _probe_failure(module, batch, err) from err
    finally:
        module.train(was_training)
        module._probing = False
    bad = [name for name, value in terms.items() if not torch.isfinite(value).all()]
    if bad:
        raise NonFiniteLossError(
            f"the first batch already gives non-finite loss term(s) {bad} before any update: check the inputs "
            "and the teacher's outputs for NaN/inf, and the loss settings (temperature, weights)."
        )
    return True


@torch.no_grad()
def _probe_failure(module: Any, batch: Any, err: Exception) -> Exception:
    """Which part cannot take the first batch (an error from deep inside torch names none): teacher, student or the
    losses, with the batch's input shapes."""
    args = module.split_batch(batch).args
    shapes = ", ".join(str(tuple(a.shape)) for a in args if isinstance(a, torch.Tensor)) or "no tensor inputs"
    sides = [("student", module.student, module.forward_student)]
    if module.teacher is not None and cached_teacher_output(batch) is None:
        sides.insert(0, ("teacher", module.teacher, module.forward_teacher))
    culprit, reason = "the losses", err
    for side, model, forward in sides:
        try:
            forward(batch)
        except Exception as side_err:  # noqa: BLE001 - only used to name the failing part
            culprit, reason = f"the {side} ({type(model).__name__})", side_err
            break
    detail = (str(reason).strip().splitlines() or [""])[0]
    return type(err)(
        f"{culprit} cannot run the first training batch (inputs {shapes}): {type(reason).__name__}: "
        f"{detail.rstrip('.')}. Check that the model's input size, classes and vocabulary match the data."
    )


def embedding_rows(model: nn.Module | None) -> int | None:
    """How many token ids ``model`` can embed (its input embedding's rows), or None when it has none."""
    get = getattr(model, "get_input_embeddings", None) or getattr(
        getattr(model, "model", None), "get_input_embeddings", None
    )
    embedding = get() if callable(get) else None
    return int(embedding.num_embeddings) if isinstance(embedding, nn.Embedding) else None


def check_vocabulary(models: dict[str, nn.Module | None], vocab_size: int | None, tokenizer: str | None) -> None:
    """Every model must embed every token id the data's tokenizer can produce (else: IndexError mid-step).

    Example:
        >>> check_vocabulary({"student": nn.Embedding(300, 4)}, 258, "bytes")
    """
    if not isinstance(vocab_size, int):
        return
    for side, model in models.items():
        if getattr(model, "reads_from_batch", False):
            continue  # a teacher-cache stand-in embeds nothing
        rows = embedding_rows(model)
        if rows is not None and rows < vocab_size:
            raise ValueError(
                f"the {side} ({type(model).__name__}) embeds {rows} token ids, but the data's tokenizer "
                f"({tokenizer or 'unnamed'}) has {vocab_size}: set the {side}'s vocab_size to at least {vocab_size}, "
                "or use the tokenizer it was built for."
            )


def check_data_vocabulary(trainer: Any, student: nn.Module, teacher: nn.Module | None) -> None:
    """:func:`check_vocabulary` against the tokenizer of the trainer's data module, when it has one."""
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    if datamodule is not None:
        vocab, tokenizer = getattr(datamodule, "vocab_size", None), getattr(datamodule, "tokenizer_id", None)
        t_vocab = getattr(datamodule, "teacher_vocab_size", None)  # the teacher's own tokenizer (cross-tokenizer KD)
        check_vocabulary({"student": student}, vocab, tokenizer)
        check_vocabulary(
            {"teacher": teacher}, t_vocab or vocab, getattr(datamodule, "teacher_tokenizer_id", None) or tokenizer
        )
