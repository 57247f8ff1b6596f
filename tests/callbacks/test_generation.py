"""The JSONL writer with several processes: `lit-distill predict` on 2 CPU processes (gloo) writes every prompt
exactly once, also across a resume, and the same rows as one process (greedy decoding)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lit_distill.callbacks import JsonlPredictionWriter
from lit_distill.cli import main
from lit_distill.data.prompts import read_prompts
from tests.data.test_prompts import data, predict

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = 14

CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: lit_distill.callbacks.JsonlPredictionWriter
      init_args: {{path: {out}}}
model:
  class_path: lit_distill.generation.GenerationModule
  init_args:
    model:
      class_path: lit_distill.models.GPT
      init_args: {{block_size: 48, n_layer: 1, n_head: 2, n_embd: 16, tokenizer_id: bytes}}
    max_new_tokens: 5
    temperature: 0.0
    allow_untrained: true  # a random GPT: the test checks the writer, not the text
data:
  class_path: lit_distill.data.PromptDataModule
  init_args: {{prompt_chars: 20, response_chars: 16, batch_size: 2, max_prompts: 14, predict_split: all}}
"""


def lit_distill_predict(
    cwd: Path, out: str, *flags: str, writer: str = "lit_distill.callbacks.JsonlPredictionWriter", ok: bool = True
):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    config = CONFIG.format(out=out).replace("lit_distill.callbacks.JsonlPredictionWriter", writer)
    (cwd / f"{out}.yaml").write_text(config)
    command = [sys.executable, "-m", "lit_distill.cli", "predict", "--config", f"{out}.yaml"]
    run = subprocess.run([*command, *flags], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if ok:
        assert run.returncode == 0, run.stderr[-3000:]
        return run.stdout + run.stderr
    return run


def prompts_of(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines()]


def test_two_processes_write_each_prompt_once_and_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever the run writes stays in tmp_path
    (tmp_path / "one.jsonl.yaml").write_text(CONFIG.format(out=str(tmp_path / "one.jsonl")))
    main(["predict", "--config", str(tmp_path / "one.jsonl.yaml"), "--trainer.devices=1"])  # in-process reference
    ddp = ["--trainer.devices=2", "--trainer.strategy=ddp"]
    lit_distill_predict(tmp_path, "two.jsonl", *ddp, "--trainer.limit_predict_batches=2")
    partial = prompts_of(tmp_path / "two.jsonl")
    assert len(partial) == 8 and len(set(partial)) == 8  # 2 ranks x 2 batches x 2 prompts
    assert json.loads((tmp_path / "two.jsonl.meta.json").read_text())["finished"] is False
    output = lit_distill_predict(tmp_path, "two.jsonl", *ddp)  # the rerun answers only the 6 prompts left
    assert "for 6 prompts" in output  # the summary counts both ranks' prompts
    written = prompts_of(tmp_path / "two.jsonl")
    assert len(written) == PROMPTS and len(set(written)) == PROMPTS and written[:8] == partial
    assert sorted(read_prompts(tmp_path / "two.jsonl")) == sorted(read_prompts(tmp_path / "one.jsonl"))
    assert json.loads((tmp_path / "two.jsonl.meta.json").read_text())["finished"] is True
    assert not list(tmp_path.glob("*.part"))


def test_part_files_of_a_crashed_run_are_merged_once_on_resume(in_tmp):
    """A crashed 2-process run leaves per-rank parts (one with a torn last line, one repeating a prompt the way a
    padding DistributedSampler does); the rerun keeps one row per prompt and answers only the rest."""
    path = in_tmp / "pairs.jsonl"
    dm = data()
    dm.setup()
    prompts = [p for p, _ in dm.splits["all"]]
    rows = [{"prompt": p, "response": f"r{i}", "_prompt_index": i} for i, p in enumerate(prompts[:5])]
    lines = [json.dumps(r) + "\n" for r in rows]
    Path(f"{path}.rank0.part").write_text(lines[0] + lines[2] + lines[4] + '{"prompt": "torn')
    Path(f"{path}.rank1.part").write_text(lines[1] + lines[3] + lines[0])
    module, _ = predict(path)
    assert sorted(module.seen) == sorted(prompts[5:])
    written = read_prompts(path)
    assert [p for p, _ in written] == prompts and written[:5] == [(p, f"r{i}") for i, p in enumerate(prompts[:5])]
    assert not list(in_tmp.glob("*.part"))
    assert JsonlPredictionWriter(str(path)).ranks == 1


class FailsOnRankZero(JsonlPredictionWriter):
    """Raises on rank 0 inside one rank-0-only section (``LIT_DISTILL_TEST_FAIL``: ``prepare`` or ``finish``)."""

    def _fail(self, section: str) -> None:
        if os.environ.get("LIT_DISTILL_TEST_FAIL") == section and self.rank == 0:
            raise OSError(f"disk full while {section} (injected)")

    def _prepare(self):
        self._fail("prepare")
        super()._prepare()

    def _finish(self, complete, pl_module):
        self._fail("finish")
        super()._finish(complete, pl_module)

    def on_exception(self, trainer, pl_module, exception):  # what each rank failed with, for the test to read
        Path(f"failed.rank{trainer.global_rank}").write_text(f"{type(exception).__name__}: {exception}")


@pytest.mark.parametrize("section", ["prepare", "finish"])
def test_a_failure_on_rank_zero_stops_every_rank_with_its_cause(tmp_path, monkeypatch, section):
    monkeypatch.setenv("LIT_DISTILL_TEST_FAIL", section)
    flags = ["--trainer.devices=2", "--trainer.strategy=ddp"]
    start = time.monotonic()
    run = lit_distill_predict(tmp_path, "fail.jsonl", *flags, writer=f"{__name__}.FailsOnRankZero", ok=False)
    assert time.monotonic() - start < 60  # not the process group's 30-minute timeout
    assert run.returncode != 0
    # The cause heads the error report; rank 1 learned it too and failed (its error is not printed twice). The run
    # ending at all shows rank 1 ended: it holds the same stdout/stderr pipes open while it lives.
    cause = f"OSError: disk full while {section} (injected)"
    reported = [line for line in run.stderr.splitlines() if line.startswith("lit-distill: error:")]
    assert reported == [f"lit-distill: error: {cause}"], run.stderr[-3000:]  # first line of the report, said once
    assert (tmp_path / "failed.rank0").read_text() == cause
    assert (tmp_path / "failed.rank1").read_text().startswith("RuntimeError: rank 0 failed while ")
    assert (tmp_path / "failed.rank1").read_text().endswith(cause)
    assert "Traceback" not in run.stderr


def test_prompts_that_repeat_word_for_word_are_answered_once_and_said(in_tmp, caplog):
    from lit_distill.data import PromptDataModule

    prompts = ["alpha", "beta", "alpha", "gamma", "delta", "beta", "epsilon"]
    (in_tmp / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    dm = PromptDataModule(prompts=str(in_tmp / "prompts.jsonl"), batch_size=3, predict_split="all")
    with caplog.at_level("INFO"):
        module, rows = predict(in_tmp / "answers.jsonl", dm=dm)
    assert len(rows) == len(prompts)  # every prompt was sent to the model: no batch or row lost on the way
    assert read_prompts(in_tmp / "answers.jsonl") == [(p, r["response"]) for p, r in zip(prompts[:2], rows)] + [
        ("gamma", rows[3]["response"]), ("delta", rows[4]["response"]), ("epsilon", rows[6]["response"])
    ]  # fmt: skip
    said = [r.getMessage() for r in caplog.records if "repeat an earlier one" in r.getMessage()]
    assert said == [f"2 of the 7 prompts repeat an earlier one word for word; {in_tmp / 'answers.jsonl'} gets one row "
                    "per distinct prompt (5)."]  # fmt: skip
