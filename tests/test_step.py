"""The training step: no host sync on the hot path, teacher dtype under autocast, compile, channels_last."""

import inspect

import pytest
import torch

from lit_distill.models import SmallCNN
from tests.helpers import loaders, make_module, trainer

SYNCING = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")


def test_training_step_reads_nothing_back_from_the_device(tmp_path, monkeypatch):
    """Only the NaN guard reads a tensor on the host, and it reads a host-side copy (pinned memory on GPU)."""
    calls = []
    active = {"on": False}
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def spy(self, *args, __original=original, __name=name, **kwargs):
            if active["on"]:
                caller = inspect.stack()[1]
                calls.append((__name, caller.filename, caller.function))
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    module = make_module()
    step = module.training_step

    def watched(*args, **kwargs):
        active["on"] = True
        try:
            return step(*args, **kwargs)
        finally:
            active["on"] = False

    module.training_step = watched
    train, _ = loaders()
    trainer(tmp_path, max_epochs=1, log_every_n_steps=1000).fit(module, train)
    assert module.trainer.global_step == 6
    offenders = [c for c in calls if not (c[1].endswith("lit_distill/guard.py") and c[2] == "_drain")]
    assert offenders == []
    assert calls, "the guard should have read its host-side flags"


def test_teacher_keeps_its_dtype_under_autocast():
    module = make_module(teacher_dtype="fp16")
    x, y = torch.rand(4, 64), torch.randint(0, 10, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert module.forward_teacher((x, y)).logits.dtype == torch.float16
        assert module.forward_student((x, y)).logits.dtype == torch.bfloat16


def test_channels_last_models_and_inputs(tmp_path):
    module = make_module(student=SmallCNN(1, [8, 16], 10), teacher=SmallCNN(1, [16, 32], 10), channels_last=True)
    weight = module.student.stage1[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    module.student.stage1.register_forward_pre_hook(
        lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last))
    )
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    module.shared_step((x, y))
    assert seen == [True]


def test_compile_from_config_trains(tmp_path):
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is not available in this torch build")
    module = make_module(compile={"backend": "aot_eager"})
    train, _ = loaders(n=32)
    trainer(tmp_path, max_epochs=1).fit(module, train)
    assert module._configured and module.student._compiled_call_impl is not None
    # In-place compile keeps checkpoint keys unchanged.
    assert all(not k.startswith("student._orig_mod") for k in module.state_dict())


@pytest.mark.parametrize("mode,marks", [("reduce-overhead", 3), (None, 0)])
def test_cuda_graph_mode_marks_every_training_step(tmp_path, monkeypatch, mode, marks):
    """``compile: {mode: reduce-overhead}`` (CUDA graphs) tells the graph trees where each training step starts, so
    a replay may reuse the last step's output memory; other compile settings leave the trees alone."""
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is not available in this torch build")
    seen = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: seen.append(1))
    options = {"backend": "aot_eager"} if mode is None else {"backend": "aot_eager", "mode": mode}
    module = make_module(compile=options)
    train, _ = loaders(n=12, batch_size=4)  # three steps
    trainer(tmp_path, max_epochs=1).fit(module, train)
    assert module.trainer.global_step == 3 and len(seen) == marks
