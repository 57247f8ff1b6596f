"""Exported weights are ordinary files: the user's umask decides their mode, as for checkpoints."""

import os

import pytest

from lit_distill.export import current_umask
from lit_distill.models import GPT
from tests.helpers import make_module


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_exported_files_get_the_users_umask(tmp_path, umask):
    assert current_umask() == umask
    student = make_module().export_student(tmp_path / "student.safetensors")
    folder = GPT(n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path / "gpt")
    for path in (student, folder / "model.safetensors", folder / "config.json"):
        assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~umask), path
