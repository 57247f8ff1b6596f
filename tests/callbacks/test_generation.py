"""The JSONL writer with several processes: `lit-distill predict` on 2 CPU processes (gloo) writes every prompt
exactly once, also across a resume, and the same rows as one process (greedy decoding)."""

import json
import os
import subprocess
import sys
from pathlib import Path

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


def lit_distill_predict(cwd: Path, out: str, *flags: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    (cwd / f"{out}.yaml").write_text(CONFIG.format(out=out))
    command = [sys.executable, "-m", "lit_distill.cli", "predict", "--config", f"{out}.yaml"]
    run = subprocess.run([*command, *flags], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout + run.stderr


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
