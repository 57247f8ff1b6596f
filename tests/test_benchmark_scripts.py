"""Every script the project ships (benchmarks/, scripts/, examples/) runs in its ``--smoke`` mode: tiny sizes on the
CPU, in seconds, so a library change that breaks a benchmark fails here and not on the GPU machine.

The scripts are found, not listed: a new one without a smoke mode fails
:func:`test_every_script_runs_in_its_smoke_mode`.
Most run inside this process (``main(["--smoke", ...])``: no interpreter start-up); the few that launch processes
themselves run as ``python -m ...``. Where a script measures something, its check below asserts on what it printed.
What needs CUDA and is therefore left out of the smoke runs: the fused loss's Triton checks, launch sweeps, kernel
probes and bandwidth ceilings; CUDA graphs (the smoke runs trace the same compiled steps with ``aot_eager``); the
resnet case of the step-overhead suite (torchvision). TRL's ``GKDTrainer`` (``trl`` is no dependency) runs where trl
is installed; elsewhere the script's run up to it is checked and the test is skipped, saying so.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("benchmarks", "scripts", "examples")


def entry_points() -> list[str]:
    """Every script: ``.py`` files under the shipped folders, except helpers (names starting with ``_``)."""
    found = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if not any(part.startswith("_") for part in rel.parts):
                found.append(rel.as_posix())
    return found


def module_name(script: str) -> str:
    return script.removesuffix(".py").replace("/", ".")


def load(script: str):
    """The script as a module: benchmarks import as a package, scripts/ and examples/ files by path."""
    if script.startswith("benchmarks/"):
        return importlib.import_module(module_name(script))
    spec = importlib.util.spec_from_file_location(Path(script).stem, ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def run_module(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    run = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


# Scripts whose smoke run re-executes its own command line (Lightning's launcher, one process per rank).
SUBPROCESS = {"benchmarks/scale/llm_scale.py"}
# Arguments beside --smoke, given the test's temporary folder.
EXTRA_ARGS: dict[str, Callable[[Path], list[str]]] = {
    "benchmarks/scale/llm_scale.py": lambda tmp: ["--cycle", str(tmp)]
}
CHECKS: dict[str, Callable[[str, Path], None]] = {}


def check(script: str):
    def register(fn):
        CHECKS[script] = fn
        return fn

    return register


@pytest.fixture
def restored():
    """What a script run in this process may change for the tests after it: environment, threads, log levels."""
    import logging

    import torch

    env, threads = dict(os.environ), torch.get_num_threads()
    levels = {name: logging.getLogger(name).level for name in ("lightning.pytorch", "lightning.fabric")}
    yield
    os.environ.clear()
    os.environ.update(env)
    torch.set_num_threads(threads)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize("script", entry_points())
def test_every_script_runs_in_its_smoke_mode(script, tmp_path, monkeypatch, capsys, restored):
    text = (ROOT / script).read_text()
    assert 'if __name__ == "__main__":' in text, f"{script} is no script: name helpers with a leading underscore"
    extra = EXTRA_ARGS.get(script, lambda _: [])(tmp_path)
    monkeypatch.chdir(tmp_path)  # whatever a smoke run writes lands here
    if script in SUBPROCESS:
        out = run_module(["-m", module_name(script), "--smoke", *extra], tmp_path).stdout
    else:
        module = load(script)
        assert hasattr(module, "main"), f"{script} needs main(argv) for its smoke run"
        try:
            module.main(["--smoke", *extra])
        except SystemExit as stop:
            if "trl is not installed" in str(stop):
                pytest.skip(f"{script}: ran up to GKDTrainer; {stop}")
            raise
        out = capsys.readouterr().out
    if script in CHECKS:
        CHECKS[script](out, tmp_path)


def test_no_script_edits_sys_path_and_none_is_long():
    """The benchmarks are a package run as modules: they import each other as such, never through sys.path; and
    they keep to the house rule of modules under 300 lines."""
    files = {p.relative_to(ROOT).as_posix(): p.read_text() for p in (ROOT / "benchmarks").rglob("*.py")}
    assert [name for name, text in files.items() if re.search(r"sys\.path\.(insert|append)", text)] == []
    assert {name: n for name, text in files.items() if (n := len(text.splitlines())) > 300} == {}


# --------------------------------------------------------------------------------------------- quality
@check("benchmarks/quality/digits_kd_vs_scratch.py")
def _digits_kd(out, tmp):
    result = last_json(out)
    assert 0 < result["scratch_acc_mean"] <= 1 and 0 < result["kd_acc_mean"] <= 1 and result["seeds"] == 1


@check("benchmarks/quality/digits_strategies.py")
def _digits_strategies(out, tmp):
    groups = last_json(out)["groups"]
    assert {g: [r["strategy"] for r in v["rows"]] for g, v in groups.items()} == {
        "mlp": ["no KD", "logit KD"],
        "cnn": ["no KD", "logit KD", "RKD"],
    }
    assert all("delta_vs_no_kd" in r for v in groups.values() for r in v["rows"][1:])


@check("benchmarks/quality/text_kd_vs_scratch.py")
def _text_kd(out, tmp):
    result = last_json(out)
    assert result["teacher_ppl"] > 1 and all(r["kd"] > 1 and r["no_kd"] > 1 for r in result["runs"])


@check("benchmarks/quality/divergences_text.py")
def _divergences_text(out, tmp):
    runs = last_json(out)["runs"]
    assert [r["divergence"] for r in runs] == [
        "forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "adaptive_kl"
    ]  # fmt: skip
    assert all(r["heldout_ppl"] > 1 and r["prompt_ppl"] > 1 and 0 < r["teacher_nll"] < 10 for r in runs)


@check("benchmarks/quality/topk_tail.py")
def _topk_tail(out, tmp):
    result = last_json(out)
    assert [r["variant"] for r in result["runs"]] == ["full logits", "top-4 tail", "top-4 renormalised"]
    for side in result["gaps"]["4"].values():
        assert set(side) == {"tail", "renormalised"} and all(-1 <= v["cosine"] <= 1 for v in side.values())
    assert (tmp / "topk_tail_work" / "top4" / "manifest.json").is_file()


@check("benchmarks/quality/generation_kd.py")
def _generation_kd(out, tmp):
    students = last_json(out)["students"]
    assert list(students) == ["no-KD", "off-policy", "seq-KD", "on-policy l=0.5", "on-policy l=1"]
    assert all(0 < row["teacher_nll"] < 10 and row["val_ppl"] > 1 for rows in students.values() for row in rows)


@check("benchmarks/quality/onpolicy_after_sft.py")
def _onpolicy_after_sft(out, tmp):
    students = last_json(out)["students"]
    assert list(students) == ["stage 1 (SFT)", "SFT", "token KD", "token KD (reverse_kl)", "seq-KD", "on-policy"]
    assert all(0 < row["teacher_nll"] < 10 and 0 < row["distinct4"] <= 1 for rows in students.values() for row in rows)


@check("benchmarks/quality/onpolicy_from_scratch.py")
def _onpolicy_from_scratch(out, tmp):
    result = last_json(out)
    assert result["steps"] == 2 and len(result) == 7 and 0 <= result["teacher"]["agreement"] <= 1


@check("benchmarks/quality/qad.py")
def _qad(out, tmp):
    result = last_json(out)
    assert list(result["rows"][0]) == ["seed", "bf16", "PTQ int4_weight_only", "QAD int4_weight_only"]
    assert all(row["bpb"] > 0 for name, row in result["rows"][0].items() if name != "seed")
    assert 0 < result["sizes"]["int4_weight_only"] < result["sizes"]["bf16"]


@check("benchmarks/quality/minilm_distill.py")
def _minilm(out, tmp):
    rows = {r["model"]: r for r in last_json(out)["rows"]}
    assert set(rows) == {"teacher", "distilled", "distilled_int8", "no_teacher", "truncated"}
    assert "export round trip" in out and "dynamic int8" in out


# ----------------------------------------------------------------------------------------------- speed
@check("benchmarks/speed/decode_profile.py")
def _decode_profile(out, tmp):
    rows = last_json(out)["batches"]
    assert set(rows) == {"2", "4"} and all(r["kernels"] > 0 for r in rows.values())  # wall ms: CPU noise
    assert all(r["host_syncs"].get("aten::_local_scalar_dense", 0) < 1 for r in rows.values())  # none per step


@check("benchmarks/speed/fused_kd_loss.py")
def _fused_loss(out, tmp):
    rows = {r["method"]: r for r in last_json(out)["rows"]}
    assert rows["ours"]["err_h"] < 0.05 and rows["ours, torch elementwise"]["err_w"] < 0.05


@check("benchmarks/speed/quantized_speed.py")
def _quantized_speed(out, tmp):
    rows = last_json(out)["rows"]
    assert not [r for r in rows if "error" in r]  # every CPU variant quantizes and decodes (tinygemm: CUDA only)
    assert {r["variant"] for r in rows} == {"unquantized", "int8_weight_only", "int8_dynamic_int8_weight",
                                            "int4_weight_only", "int8_dynamic_int4_weight"}  # fmt: skip
    assert all(r["tokens_per_s"] > 0 for r in rows)


def summary_of(out: str, name: str, tmp: Path) -> str:
    """``benchmarks.speed.speed_summary``'s table over this script's output, saved as run_speed_gpu.sh does."""
    from benchmarks.speed import speed_summary

    (tmp / f"{name}.txt").write_text(out)
    lines = {"fused": speed_summary.fused_lines, "step_overhead": speed_summary.step_lines}
    return "\n".join(lines.get(name, speed_summary.cache_lines)(tmp))


@check("benchmarks/speed/fused_kd_variants.py")
def _fused_variants(out, tmp):
    text = summary_of(out, "fused", tmp)
    assert "| smoke | jsd | fp32 logits |" in text and "fastest of all variants, smoke jsd" in text


@check("benchmarks/speed/step_overhead.py")
def _step_overhead(out, tmp):
    text = summary_of(out, "step_overhead", tmp)
    assert "module/hand" in text and "vs uncompiled hand loop" in text


@check("benchmarks/speed/teacher_cache.py")
def _teacher_cache(out, tmp):
    text = summary_of(out, "teacher_cache", tmp)
    assert "loader '0'" in text and "loader '1p'" in text and "removing it alone" in text


@check("benchmarks/speed/speed_summary.py")
def _speed_summary(out, tmp):
    assert "missing" in out  # an empty folder: every part says what is missing


@check("benchmarks/speed/generation_speed.py")
def _generation_speed(out, tmp):
    result = last_json(out)
    assert result["errors"] == [] and [row["batch"] for row in result["sampling"]] == [2, 4]
    assert all(row[path]["median"] > 0 for row in result["sampling"] for path in ("transformers", "fast"))
    step = result["onpolicy_step"]
    assert step["sampling_ms"] > 0 and step["teacher_ms"] > 0 and step["student_update_ms"] > 0
    # one compiled decode step per batch size; the on-policy step reuses the batch-4 one
    assert result["diagnostics"]["unique_graphs"] == 2
    assert "on-policy step (lambda=1), batch 4" in out


# ----------------------------------------------------------------------------------------------- scale
@check("benchmarks/scale/llm_loop.py")
def _llm_loop(out, tmp):
    """One process (fused loss) above; here full logits give the same loss, and FSDP2 runs on 2 CPU processes."""
    from benchmarks.scale import llm_loop

    fused = last_json(out)
    assert fused["tokens"] == 2 * 2 * 32 and fused["world_size"] == 1 and fused["tokens_per_s"] > 0
    assert (
        fused["flops_per_token"]["total"] == fused["flops_per_token"]["student"] + fused["flops_per_token"]["teacher"]
    )
    llm_loop.main(["--smoke", "--loss", "full", "--out", str(tmp / "full.json")])
    assert json.loads((tmp / "full.json").read_text())["final_loss"] == pytest.approx(fused["final_loss"], rel=1e-4)
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        llm_loop.main(["--smoke", "--out", str(tmp / "full.json")])
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "benchmarks.scale.llm_loop"]
    run_module([*torchrun, "--smoke", "--fsdp", "--out", str(tmp / "fsdp.json")], tmp)
    row = json.loads((tmp / "fsdp.json").read_text())
    assert row["world_size"] == 2 and row["run"].startswith("hand loop, fsdp2 x2")
    assert row["tokens"] == 2 * 2 * 2 * 32 and len(row["peak_gib_per_rank"]) == 2 and 0 < row["final_loss"] < 10


@check("benchmarks/scale/llm_scale.py")
def _llm_scale(out, tmp):
    """FSDP2 x2 on CPU with a sharded checkpoint (above); a second process resumes from it into a student initialised
    differently (which must start from the saved weights), exports and reloads it."""
    row = last_json(out)
    assert row["world_size"] == 2 and row["tokens_per_s"] > 0 and len(row["peak_gib_per_rank"]) == 2
    resumed = run_module(["-m", "benchmarks.scale.llm_scale", "--smoke", "--resume", row["cycle"]["checkpoint"]], tmp)
    result = last_json(resumed.stdout)
    assert result["resumed_weight_sum"] == pytest.approx(row["cycle"]["weight_sum"], rel=1e-9, abs=1e-9)
    assert len(result["resumed_losses"]) == 2 and result["reloaded_params"] == row["student"]["params"]


@check("benchmarks/scale/multi_gpu.py")
def _multi_gpu(out, tmp):
    result = last_json(out)
    assert [row["devices"] for row in result["rows"]] == [1, 2]
    assert all(row["samples_per_s"] > 0 for row in result["rows"]) and result["rows"][0]["scaling"] == 1.0


@check("benchmarks/scale/trl_gkd.py")
def _trl(out, tmp):
    row = last_json(out)
    assert "GKDTrainer" in row["run"] and row["tokens"] == 2 * 2 * 32 and 0 < row["train_loss"] < 10


@check("benchmarks/quality/cross_tokenizer.py")
def _xtok_quality(out, tmp):
    runs = last_json(out)["runs"]
    assert {r["run"] for r in runs} == {"ce", "uld", "span_token", "span_byte", "token_kd"}
    assert all(0 < r["bits_per_byte"] < 10 and r["teacher_nll_per_byte"] > 0 for r in runs)


@check("benchmarks/speed/cross_tokenizer.py")
def _xtok_speed(out, tmp):
    result = last_json(out)
    ours = [r for r in result["rows"] if not r["case"].startswith("baseline")]
    assert len(ours) == 5 and all(r["largest_fp32_vs_tokens_x_vocab"] < 1 for r in ours)  # chunks only
    assert result["accuracy"]["loss"] < 1e-5 and len(result["phases_ms"]) == 8


# --------------------------------------------------------------------------------------------- scripts
@check("scripts/make_tiny_hf_models.py")
def _tiny_models(out, tmp):
    assert last_json(out) == {"plain": ["student", "teacher", "tokenizer"], "chat": ["student", "teacher", "tokenizer"]}


@check("scripts/make_xtok_models.py")
def _xtok_models(out, tmp):
    made = last_json(out)
    assert sorted(made) == ["bpe", "hf_student", "hf_teacher"] and "model.safetensors" in made["hf_student"]


@check("scripts/make_pydoc_chat.py")
def _pydoc_chat(out, tmp):
    committed = (ROOT / "lit_distill" / "data" / "pydoc_chat.jsonl").read_text().splitlines()
    assert last_json(out)["conversations"] > 50 and len(committed) > 50
