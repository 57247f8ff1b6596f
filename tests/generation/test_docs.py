"""docs/generation.md: its commands are accepted as written, and its Python example runs."""

import re
import shutil
from pathlib import Path

import pytest

from lit_distill.cli import main

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "generation.md").read_text()


def test_the_commands_of_the_generation_page_parse(tmp_path, monkeypatch, capsys):
    pytest.importorskip("peft")  # the LoRA recipe
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    lines = " ".join(re.findall(r"```bash\n(.*?)```", PAGE, re.S)).splitlines()
    commands = [line.split("#")[0].split() for line in lines if line.lstrip().startswith("lit-distill")]
    assert len(commands) >= 9
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([*command[1:], "--print_config"])
        assert exit_info.value.code in (None, 0), f"{' '.join(command)}\n{capsys.readouterr().err[-2000:]}"
    scripts = [line.split("#")[0].split()[1] for line in lines if line.lstrip().startswith("python ")]
    assert scripts and all((ROOT / script).is_file() for script in scripts)


def test_the_python_example_runs(capsys):
    (code,) = re.findall(r"```python\n(.*?)```", PAGE, re.S)
    exec(compile(code, "docs/generation.md", "exec"), {})
    printed = capsys.readouterr().out.strip()
    shape = re.fullmatch(r"torch\.Size\(\[2, (\d+)\]\)", printed)
    assert shape and 3 < int(shape.group(1)) <= 3 + 8, printed  # the prompt, then 1 to 8 new tokens
