"""The `lit-distill` CLI end to end: every bundled YAML parses and runs; W&B offline logs the terms."""

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lit_distill.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
USAGE = re.compile(r"^#\s+(?:\S+=\S+\s+)*lit-distill (fit|predict|validate|test) --config (\S+)", re.M)
FAST = ["--trainer.logger=false", "--trainer.enable_progress_bar=false"]


def usage_of(config: str) -> str:
    """Each config documents how to run it in a comment: `#   lit-distill <subcommand> --config <file>`."""
    found = [m for m in USAGE.finditer((ROOT / config).read_text()) if m.group(2) == config]
    assert found, f"{config} lacks a '#   lit-distill <subcommand> --config {config}' usage comment"
    return found[-1].group(1)


REQUIRES = re.compile(r"^#\s*requires:\s*(\S+)", re.M)
CALLBACK_FLAG = re.compile(r"^#.*--trainer\.callbacks\.init_args\.(\w+)=(\S+)", re.M)


def rerun_flags(config: str | Path) -> list[tuple[str, str]]:
    """``(argument, value)`` of each ``--trainer.callbacks.init_args.ARG=VALUE`` a recipe's comment says to add when
    it runs again (a producer refuses to replace its output otherwise)."""
    return CALLBACK_FLAG.findall((ROOT / config).read_text())


def skip_unless_installed(config: str) -> None:
    """A recipe for an optional extra says `# requires: <module>`; it is skipped where that is absent."""
    for module in REQUIRES.findall((ROOT / config).read_text()):
        pytest.importorskip(module, reason=f"{config} needs the optional package {module}")


@pytest.mark.parametrize("config", CONFIGS)
def test_config_parses_and_documents_its_command(config, capsys):
    skip_unless_installed(config)
    command = usage_of(config)
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--config", str(ROOT / config), "--print_config"])
    assert exit_info.value.code in (None, 0)
    assert "class_path" in capsys.readouterr().out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A copy of configs/ where every recipe that writes a checkpoint has run briefly, in dependency order."""
    work = tmp_path_factory.mktemp("recipes")
    shutil.copytree(ROOT / "configs", work / "configs")
    if importlib.util.find_spec("transformers"):  # the HF recipe distills tiny random models made locally
        script = ROOT / "scripts" / "make_tiny_hf_models.py"
        subprocess.run([sys.executable, str(script), "--out", "checkpoints/text/hf_tiny"], cwd=work, check=True)
        subprocess.run([sys.executable, str(script), "--chat"], cwd=work, check=True)  # chat recipes
        xtok = ROOT / "scripts" / "make_xtok_models.py"  # the cross-tokenizer recipes' tokenizers and HF pair
        subprocess.run([sys.executable, str(xtok)], cwd=work, check=True)
    if (ROOT / "examples").is_dir():
        shutil.copytree(ROOT / "examples", work / "examples")
    old = os.getcwd()
    os.chdir(work)
    producers = [
        c
        for c in CONFIGS
        if "dirpath:" in (ROOT / c).read_text()
        and usage_of(c) == "fit"
        and all(importlib.util.find_spec(m) for m in REQUIRES.findall((ROOT / c).read_text()))
    ]
    pending = list(producers)
    for _ in range(len(producers)):  # a producer may need another's output first
        for config in list(pending):
            try:
                main(
                    [
                        "fit",
                        "--config",
                        config,
                        "--trainer.max_epochs=1",
                        "--trainer.limit_train_batches=2",
                        "--trainer.limit_val_batches=2",
                        *FAST,
                    ]
                )
                pending.remove(config)
            except SystemExit as err:  # missing input checkpoint: retry after the others
                if err.code not in (2,):
                    raise
    # Teacher caches (`predict` recipes with TeacherCacheWriter) are inputs of the cached recipes.
    for config in [c for c in CONFIGS if "TeacherCacheWriter" in (ROOT / c).read_text() and usage_of(c) == "predict"]:
        main(["predict", "--config", config, *FAST])
    # Generated {"prompt", "response"} files are inputs of the sequence-KD recipes; two batches are enough.
    for config in [
        c for c in CONFIGS if "JsonlPredictionWriter" in (ROOT / c).read_text() and usage_of(c) == "predict"
    ]:
        main(["predict", "--config", config, "--trainer.limit_predict_batches=2", *FAST])
    os.chdir(old)
    assert not pending, f"these recipes could not run: {pending}"
    return work


@pytest.mark.parametrize("config", CONFIGS)
def test_config_runs_fast_dev_run(config, workdir, monkeypatch):
    skip_unless_installed(config)
    monkeypatch.chdir(workdir)
    again = [f"--trainer.callbacks.init_args.{arg}={value}" for arg, value in rerun_flags(config)]  # ran in workdir
    main([usage_of(config), "--config", config, "--trainer.fast_dev_run=true", *again, *FAST])


def test_quickstart_end_to_end_in_a_subprocess(tmp_path):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "lit_distill.cli"]
    missing = subprocess.run(
        [*cli, "fit", "--config", "configs/quickstart.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert missing.returncode == 2
    error = missing.stderr[missing.stderr.index("lit-distill: error:") :].splitlines()
    assert "Create it first with: lit-distill fit --config configs/digits/teacher.yaml" in error[0]
    assert "Traceback" not in missing.stderr
    for config in ("configs/digits/teacher.yaml", "configs/quickstart.yaml"):
        run = subprocess.run(
            [*cli, "fit", "--config", config, "--trainer.max_epochs=3", "--trainer.check_val_every_n_epoch=1"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one stream, in the order a terminal shows it
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stdout[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    summary = re.fullmatch(
        r"\[lit-distill\] final validation: .*student_acc=([\d.]+)\s+teacher_acc=([\d.]+).*", lines[-1]
    )
    assert summary, f"the summary is not the last line printed:\n{run.stdout[-2000:]}"
    assert 0.0 < float(summary.group(1)) <= 1.0 and float(summary.group(2)) > 0.8
    for noise in ("Tip:", "tensorboardX", "log_every_n_steps", "LeafSpec", "Warning"):
        assert noise not in run.stdout, noise
    assert list(tmp_path.glob("lightning_logs/version_*/student.safetensors"))
    assert not (tmp_path / "config.yaml").exists()


def wandb_config(data: bytes) -> dict[str, str]:
    """Config items of a W&B run file: protobuf ConfigItem, key (field 1) then value_json (field 16)."""
    items = {}
    for match in re.finditer(rb"\n[\x01-\x7f]([\w./-]+)\x82\x01([\x00-\x7f])", data):
        items[match.group(1).decode()] = data[match.end() : match.end() + match.group(2)[0]].decode()
    return items


def test_wandb_offline_run_records_loss_terms_and_the_full_config(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("WANDB_MODE", "offline")
    main(
        [
            "fit",
            "--config",
            "configs/digits/wandb.yaml",
            "--trainer.max_epochs=1",
            "--trainer.check_val_every_n_epoch=1",
            "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false",
            "--loss.logit_kd.temperature=3",
            "--trainer.default_root_dir=wandb_root",
        ]
    )
    import wandb

    wandb.finish()  # what process exit does for a CLI run
    runs = glob.glob("wandb/offline-run-*/run-*.wandb")
    assert runs
    deadline = time.time() + 60
    while True:  # the wandb service writes the run file in the background
        data = Path(sorted(runs)[-1]).read_bytes()
        if b"val/teacher_acc" in data or time.time() > deadline:
            break
        time.sleep(1)
    for key in (b"train/logit_kd", b"train/ce", b"train/loss", b"val/student_acc", b"val/teacher_acc"):
        assert key in data, key
    config = wandb_config(data)
    expected = {
        "loss.logit_kd.temperature": "3.0",
        "loss.logit_kd.weight": "0.9",
        "loss.logit_kd.divergence": '"forward_kl"',
        "loss.ce.weight": "0.1",
        "model.optimizer.lr": "0.003",
        "data.batch_size": "32",
        "trainer.max_epochs": "1",
        "params.student": "2410",
        "params.teacher": str(64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10),
        "recipe": '"configs/digits/wandb.yaml"',
    }
    assert {k: config.get(k) for k in expected} == expected
    twice = sorted(k for k in config if "." not in k and any(c.endswith(f".{k}") for c in config))
    assert not twice, f"logged both bare and under their flag's name: {twice}"  # one namespace
    assert not Path("config.yaml").exists()  # W&B keeps the config; nothing lands in the working directory
    assert not Path("lit-distill").exists()  # Lightning's <project>/<run id>/checkpoints for a W&B logger
    assert list(Path("wandb_root/lightning_logs").glob("version_0/checkpoints/epoch=0-*.ckpt"))  # the run's folder


def test_validate_and_test_from_a_checkpoint_use_the_recipe(workdir, monkeypatch, capsys):
    """`lit-distill test --ckpt_path` keeps the recipe's models and loads the student from the checkpoint."""
    monkeypatch.chdir(workdir)
    recipe = ["--config", "configs/digits/no_kd.yaml"]
    main(["fit", *recipe, "--trainer.max_epochs=1", "--trainer.check_val_every_n_epoch=1",
          "--trainer.default_root_dir=ckpt_run", *FAST])  # fmt: skip
    ckpt = sorted(Path("ckpt_run").rglob("*.ckpt"))[-1]
    for command in ("validate", "test"):
        main([command, *recipe, f"--ckpt_path={ckpt}", *FAST])
    assert "student_acc" in capsys.readouterr().out


def docs_block(first_line: str, page: str = "docs/extending.md") -> str:
    """The code block of a docs page whose first line is ``first_line``."""
    blocks = re.findall(r"```\w*\n(.*?)```", (ROOT / page).read_text(), re.S)
    found = [b for b in blocks if b.splitlines()[0].strip() == first_line]
    assert len(found) == 1, f"{page} has {len(found)} blocks starting with {first_line!r}"
    return found[0]


def test_the_documented_custom_strategy_runs_from_yaml_and_from_the_command_line(workdir, tmp_path, monkeypatch):
    """docs/extending.md's complete custom strategy, as written, used by class_path from YAML and from the shell."""
    from lit_distill.cli.app import build

    (tmp_path / "mylosses.py").write_text(docs_block("# mylosses.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(workdir)
    recipe = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    recipe["model"]["init_args"].update(yaml.safe_load(docs_block("losses:")))
    (tmp_path / "my_recipe.yaml").write_text(yaml.safe_dump(recipe))
    fast = ["--trainer.fast_dev_run=true", *FAST]
    runs = [
        ["--config", str(tmp_path / "my_recipe.yaml"), "--loss.confident_kd.temperature", "2"],
        ["--config", "configs/quickstart.yaml", "--model.init_args.losses+=mylosses.ConfidentKD"],
    ]
    for args in runs:
        cli = build(["fit", *args, *fast])
        loss = cli.model.losses[[type(x).__name__ for x in cli.model.losses].index("ConfidentKD")]
        assert loss.name == "confident_kd" and loss.temperature == (2.0 if "--loss" in " ".join(args) else 4.0)
        value = float(cli.trainer.callback_metrics["val/confident_kd"])
        assert 0.0 < value < float("inf")


def test_the_commands_of_the_cli_manual_parse(tmp_path, monkeypatch, capsys):
    """Every `lit-distill` command in docs/cli.md's shell blocks is accepted as written (parsed, not run)."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    (tmp_path / "short.yaml").write_text("trainer:\n  max_epochs: 1\n")
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "docs" / "cli.md").read_text(), re.S)
    lines = " ".join(blocks).replace("\\\n", " ").splitlines()
    commands = [line.split("#")[0].split(">")[0].split() for line in lines if line.lstrip().startswith("lit-distill")]
    assert len(commands) >= 8
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([*command[1:], "--print_config"])
        assert exit_info.value.code in (None, 0), f"{' '.join(command)}\n{capsys.readouterr().err[-2000:]}"
    assert "class_path: lit_distill.DistillationModule" in capsys.readouterr().out
