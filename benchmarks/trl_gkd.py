"""TRL's ``GKDTrainer`` with ``lmbda=0, beta=0`` (supervised forward-KL KD on full logits) on a Llama pair.

    python benchmarks/trl_gkd.py --pair a --out trl_a_1gpu.json                           # 1 GPU
    torchrun --nproc_per_node 2 benchmarks/trl_gkd.py --pair a --out trl_a_ddp2.json      # 2 GPUs, DDP
    python benchmarks/trl_gkd.py --smoke --out /tmp/trl_smoke.json                       # CPU check

The peer baseline for lit-distill's token KD: the same random-init pair, the same synthetic rows
(llm_common), ``batch x seq`` tokens per device and step, bf16 autocast over an fp32 student (HF
Trainer's ``bf16=True``), a bf16 teacher, AdamW(lr=1e-3, weight_decay=0.01) at a constant rate.
``lmbda=0`` never samples from the student, ``beta=0`` makes GKD's generalized JSD the forward
KL(teacher || student) at T=1 over every next-token position, as ``TokenKD(forward_kl)``. TRL
turns gradient checkpointing on by default; it is off here as on our side (``--gradient-checkpointing``
measures TRL's default). Timing starts at step ``--warmup`` (synchronised) and ends after the last step;
tokens/s counts ``batch x seq`` per device and step over all ranks. Rank 0 prints (and writes to ``--out``)
one JSON row with tokens/s, MFU (llm_common's formula) and peak memory per rank.

Without torchrun only GPU 0 is made visible: HF Trainer would otherwise wrap the student in
``nn.DataParallel`` over every visible GPU. The ``datasets.Dataset`` is given its fingerprint: hashing
it pickles with dill, which failed on the GPU image.

trl is not a lit-distill dependency. CPU: ``python -m venv /work/trlvenv`` with torch, then
``pip install trl==1.16.0 datasets==5.0.1``; GPU image: the wheels in ``.whl`` (see .whl/README.txt).
"""

from __future__ import annotations

import os

if "LOCAL_RANK" not in os.environ:  # one process: one GPU (must precede any CUDA initialisation)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # GKDTrainer lives in trl.experimental in TRL 1.x

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llm_common as C  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)


def token_dataset(rows: int, seq_len: int, vocab: int, seed: int):
    """``rows`` synthetic rows (``input_ids``, ``labels``) as a ``datasets.Dataset`` with a fixed fingerprint."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    ids = [C.synthetic_row(i, seq_len, vocab, seed).tolist() for i in range(rows)]
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


def run(args: argparse.Namespace) -> None:
    teacher_shape, student_shape = C.resolve_args(args)
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    torch.manual_seed(args.seed)
    student = C.causal_lm(student_shape.config(), device)
    teacher = C.causal_lm(teacher_shape.config(), device, torch.bfloat16 if cuda else None).eval()
    teacher.requires_grad_(False)
    timer = C.StepTimer(args.warmup, device)
    total_steps = args.warmup + args.steps

    class Clock(TrainerCallback):
        def on_train_begin(self, train_args, state, control, **kwargs):
            C.reset_peak_memory(device)

        def on_step_begin(self, train_args, state, control, **kwargs):
            timer.step_start(state.global_step)

        def on_step_end(self, train_args, state, control, **kwargs):
            if state.global_step == total_steps:
                self.seconds = timer.stop()

    clock = Clock()
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
            processing_class=placeholder_tokenizer(),
            callbacks=[clock],
        )
        result = trainer.train()
    mode = f"ddp x{world}" if world > 1 else "single"
    C.report(args, f"TRL {_trl_version()} GKDTrainer lmbda=0 beta=0, {mode}", teacher_shape, student_shape,
             clock.seconds, device, gradient_checkpointing=args.gradient_checkpointing,
             optim=str(trainer.args.optim), train_loss=round(float(result.training_loss), 5))  # fmt: skip


def _trl_version() -> str:
    import trl

    return trl.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_model_args(parser)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="TRL's default; off to match ours")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even if CUDA is available")
    args = parser.parse_args()
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("trl is not installed (it is no lit-distill dependency): pip install trl==1.16.0") from None
    run(args)


if __name__ == "__main__":
    main()
