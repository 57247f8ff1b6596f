"""QuantizationAwareDistillation in Lightning: every loss strategy, the fused LM-head loss, the export, and errors."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lit_distill.losses import (
    DIST,
    DKD,
    PKT,
    RKD,
    AttentionTransfer,
    CrossEntropy,
    HiddenCosine,
    HiddenMSE,
    HintLoss,
    LogitKD,
    TokenKD,
)
from lit_distill.models import GPT, MLP, SmallCNN
from lit_distill.quantization import QuantizationAwareDistillation, load_quantized
from lit_distill.quantization.qat import fake_quantized_layers, set_fake_quant
from tests.helpers import loaders, make_module, trainer

MLP_LOSSES = {
    "logit_kd": lambda: [LogitKD(temperature=4.0), CrossEntropy(weight=0.5)],
    "dkd": lambda: [DKD()],
    "dist": lambda: [DIST()],
    "hint": lambda: [HintLoss(student_layer="body.1", teacher_layer="body.1")],
    "hidden_mse": lambda: [HiddenMSE(student_layer="body.1", teacher_layer="body.1", adapter="auto")],
    "hidden_cosine": lambda: [HiddenCosine(student_layer="body.1", teacher_layer="body.1", adapter="auto")],
    "rkd": lambda: [RKD(student_layer="body.1", teacher_layer="body.1")],
    "pkt": lambda: [PKT(student_layer="body.1", teacher_layer="body.1")],
}


class CountRounding:
    """Counts forwards of the student's weight fake quantizers while they are switched on."""

    def __init__(self, student):
        self.calls = 0
        for m in student.modules():
            if getattr(m, "weight_fake_quantizer", None) is not None:
                m.weight_fake_quantizer.register_forward_hook(self.hook)

    def hook(self, module, args, out):
        self.calls += int(module.enabled)


def fit(tmp_path, module, data, **qad):
    qad.setdefault("export", False)
    callback = QuantizationAwareDistillation(**qad)
    run = trainer(tmp_path, max_steps=3, limit_val_batches=0, callbacks=[callback])
    counter = []
    callback_setup = callback.setup

    def setup_then_count(trainer_, pl_module, stage):  # count from the moment the layers exist
        callback_setup(trainer_, pl_module, stage)
        counter.append(CountRounding(pl_module.student))

    callback.setup = setup_then_count
    run.fit(module, *data)
    return run, callback, counter[0]


@pytest.mark.parametrize("losses", list(MLP_LOSSES), ids=list(MLP_LOSSES))
def test_every_loss_strategy_trains_the_fake_quantized_student(tmp_path, losses):
    module = make_module(student=MLP(64, [32], 10), teacher=MLP(64, [64], 10), losses=MLP_LOSSES[losses]())
    start = {k: v.clone() for k, v in module.student.state_dict().items()}
    run, callback, counter = fit(tmp_path, module, loaders(), scheme="int8_dynamic_int4_weight")
    assert run.global_step == 3 and fake_quantized_layers(module.student) == ["body.0", "head"] == callback.layers
    assert counter.calls >= 3 * 2  # both layers rounded on every training step (the probe adds more)
    assert any(not torch.equal(v, start[k]) for k, v in module.student.state_dict().items())


def test_attention_transfer_on_a_cnn_student(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = TensorDataset(torch.rand(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g))
    module = make_module(
        student=SmallCNN(1, [8, 16]), teacher=SmallCNN(1, [16, 32]),
        losses=[AttentionTransfer(student_layer="stage2", teacher_layer="stage2"), LogitKD()],
    )  # fmt: skip
    run, callback, counter = fit(tmp_path, module, (DataLoader(images, batch_size=8),), group_size=16)
    assert callback.layers and counter.calls >= 3


def gpt(layers, width):
    return GPT(vocab_size=258, block_size=32, n_layer=layers, n_head=2, n_embd=width, tokenizer_id="bytes")


def text_module(fused, seed=0):
    torch.manual_seed(seed)
    return make_module(student=gpt(1, 32), teacher=gpt(1, 64), losses=[TokenKD(fused=fused, lm_weight=0.5)])


def text_batch():
    ids = torch.randint(0, 258, (4, 17), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}


@pytest.mark.parametrize("quantize_head", [False, True])
def test_fused_and_unfused_token_kd_see_the_same_fake_quantized_student(tmp_path, quantize_head):
    """The fused LM-head loss reads hidden states from fake-quantized blocks: same loss as the logits path. Only
    a quantized head is refused with it (the fused loss reads the head's raw weight)."""
    run = trainer(tmp_path)
    values = {}
    for fused in (False, True):
        module = text_module(fused)
        callback = QuantizationAwareDistillation("int4_weight_only", quantize_head=quantize_head, export=False)
        module.trainer = run
        if fused and quantize_head:
            with pytest.raises(ValueError, match="quantize_head=true.*fused LM-head loss.*fused: false"):
                callback.setup(run, module, "fit")
            continue
        callback.setup(run, module, "fit")
        assert ("head" in fake_quantized_layers(module.student)) is quantize_head
        module.train()
        values[fused] = module.shared_step(text_batch())[0]
        set_fake_quant(module.student, False)
        assert not torch.allclose(module.shared_step(text_batch())[0], values[fused])  # the rounding mattered
    if not quantize_head:
        assert torch.allclose(values[True], values[False], rtol=1e-5, atol=1e-6)


def test_the_export_computes_what_the_student_trained_to_compute(tmp_path):
    module = make_module(student=MLP(64, [32], 10), teacher=MLP(64, [64], 10))
    out = tmp_path / "int4"
    fit(tmp_path, module, loaders(), scheme="int4_weight_only", export=True, path=str(out), dtype=None)
    reloaded = load_quantized(out, model=MLP(64, [32], 10))
    x = torch.rand(8, 64)
    with torch.no_grad():
        assert torch.equal(reloaded(x), module.student.eval()(x))


def test_an_existing_export_folder_is_refused_before_training(tmp_path):
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "model.safetensors").write_text("earlier")
    module = make_module(student=MLP(64, [32], 10))
    with pytest.raises(FileExistsError, match="not empty; set overwrite: true"):
        fit(tmp_path, module, loaders(), export=True, path=str(tmp_path / "q"))


def test_arguments_are_checked_when_the_callback_is_built():
    with pytest.raises(ValueError, match="cannot be trained"):
        QuantizationAwareDistillation("int8_dynamic_int8_weight")
    with pytest.raises(ValueError, match="group_size must be > 0"):
        QuantizationAwareDistillation(group_size=0)
    with pytest.raises(ValueError, match="unknown quantization scheme"):
        QuantizationAwareDistillation("fp3")
