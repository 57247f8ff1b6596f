"""TRL's ``GKDTrainer`` with ``lmbda=0, beta=0`` (supervised forward-KL KD on full logits) on a Llama pair.

    python -m benchmarks.scale.trl_gkd --pair a --out trl_a_1gpu.json                        # 1 GPU
    torchrun --nproc_per_node 2 -m benchmarks.scale.trl_gkd --pair a --out trl_a_ddp2.json   # 2 GPUs, DDP
    python -m benchmarks.scale.trl_gkd --smoke --out /tmp/trl_smoke.json                     # CPU check

The peer baseline for lit-distill's token KD: the same random-init pair, the same synthetic rows
(benchmarks/_lib), ``batch x seq`` tokens per device and step, bf16 autocast over an fp32 student (HF
Trainer's ``bf16=True``), a bf16 teacher, AdamW(lr=1e-3, weight_decay=0.01) at a constant rate.
``lmbda=0`` never samples from the student, ``beta=0`` makes GKD's generalized JSD the forward
KL(teacher || student) at T=1 over every next-token position, as ``TokenKD(forward_kl)``. TRL
turns gradient checkpointing on by default; it is off here as on our side (``--gradient-checkpointing``
measures TRL's default). Timing starts at step ``--warmup`` (synchronised) and ends after the last step;
tokens/s counts ``batch x seq`` per device and step over all ranks. Rank 0 prints (and writes to ``--out``)
one JSON row with tokens/s, MFU (benchmarks/_lib/llm.py's formula) and peak memory per rank.

Without torchrun only GPU 0 is made visible: HF Trainer would otherwise wrap the student in
``nn.DataParallel`` over every visible GPU. The ``datasets.Dataset`` is given its fingerprint: hashing
it pickles with dill, which failed on the GPU image.

trl is not a lit-distill dependency: ``pip install trl==1.16.0 datasets==5.0.1``. Without it, ``--smoke`` builds the
pair and a collated batch and scores it, then stops with a message that names the missing package.
"""

from __future__ import annotations

import os

if __name__ == "__main__" and "LOCAL_RANK" not in os.environ:  # one process, one GPU: before CUDA is initialised
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import torch  # noqa: E402

from benchmarks._lib.llm import llama  # noqa: E402
from benchmarks._lib.results import add_model_args, report, resolve_args  # noqa: E402
from benchmarks._lib.synthetic import synthetic_row  # noqa: E402
from benchmarks._lib.timing import Clock, reset_peak_memory  # noqa: E402
from benchmarks._lib.trainers import parse, parser  # noqa: E402


def token_dataset(rows: int, seq_len: int, vocab: int, seed: int):
    """``rows`` synthetic rows (``input_ids``, ``labels``) as a ``datasets.Dataset`` with a fixed fingerprint."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    ids = [synthetic_row(i, seq_len, vocab, seed).tolist() for i in range(rows)]
    column = pa.array(ids, type=pa.list_(pa.int64()))
    table = InMemoryTable(pa.table({"input_ids": column, "labels": column}))
    return Dataset(table, fingerprint=f"lit-distill-synthetic-tokens-s{seed}-{rows}x{seq_len}-v{vocab}")


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    ids = torch.tensor([row["input_ids"] for row in rows])
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.tensor([r["labels"] for r in rows]),
    }


def placeholder_tokenizer():
    """A three-token tokenizer: GKDTrainer wants a pad id; the data is already token ids."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def build(args: argparse.Namespace, cuda: bool):
    """The pair (student first, as llm_loop.py, so both baselines start from the same weights) on its device."""
    teacher_shape, student_shape = resolve_args(args)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    torch.manual_seed(args.seed)
    student = llama(student_shape, device).model
    teacher = llama(teacher_shape, device, "bf16" if cuda else None).model.eval().requires_grad_(False)
    return teacher_shape, student_shape, device, student, teacher


def run(args: argparse.Namespace) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and not args.cpu
    teacher_shape, student_shape, device, student, teacher = build(args, cuda)
    tokenizer, rows = placeholder_tokenizer(), [synthetic_row(i, 8, 16).tolist() for i in (0, 1)]
    batch = collate([{"input_ids": row, "labels": row} for row in rows])
    with torch.no_grad():  # what GKDTrainer will feed both models, checked before trl is needed
        assert student(**batch).logits.shape == teacher(**batch).logits.shape
    try:
        from transformers import TrainerCallback
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError as err:
        why = f"trl is not installed ({err}); it is no lit-distill dependency: pip install trl==1.16.0"
        raise SystemExit(why) from None
    clock, total_steps = Clock(device), args.warmup + args.steps

    class Timing(TrainerCallback):
        def on_train_begin(self, train_args, state, control, **kwargs):
            reset_peak_memory(device)

        def on_step_begin(self, train_args, state, control, **kwargs):
            if state.global_step == args.warmup:
                clock.mark("start")

        def on_step_end(self, train_args, state, control, **kwargs):
            if state.global_step == total_steps:
                clock.mark("end")

    dataset = token_dataset(total_steps * args.batch_size * world, args.seq_len, student_shape.vocab, args.seed)
    with tempfile.TemporaryDirectory() as scratch:  # Trainer wants an output_dir; nothing is saved there
        config = GKDConfig(
            output_dir=scratch,
            per_device_train_batch_size=args.batch_size,
            max_steps=total_steps,
            learning_rate=1e-3,
            weight_decay=0.01,
            lr_scheduler_type="constant",
            bf16=cuda,
            use_cpu=not cuda,
            gradient_checkpointing=args.gradient_checkpointing,
            lmbda=0.0,
            beta=0.0,
            seq_kd=False,
            max_length=args.seq_len,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
            ddp_find_unused_parameters=False,
            seed=args.seed,
        )
        trainer = GKDTrainer(
            model=student,
            teacher_model=teacher,
            args=config,
            data_collator=collate,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[Timing()],
        )
        result = trainer.train()
    mode = f"ddp x{world}" if world > 1 else "single"
    report(args, f"TRL {_trl_version()} GKDTrainer lmbda=0 beta=0, {mode}", teacher_shape, student_shape,
           clock.ms("start", "end") / 1e3, device, gradient_checkpointing=args.gradient_checkpointing,
           optim=str(trainer.args.optim), train_loss=round(float(result.training_loss), 5))  # fmt: skip


def _trl_version() -> str:
    import trl

    return trl.__version__


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__)
    add_model_args(p)
    p.add_argument("--gradient-checkpointing", action="store_true", help="TRL's default; off to match ours")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even if CUDA is available")
    args = parse(p, argv, cpu=True)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # GKDTrainer lives in trl.experimental in TRL 1.x
    warnings.filterwarnings("ignore", category=FutureWarning)
    run(args)


if __name__ == "__main__":
    main()
