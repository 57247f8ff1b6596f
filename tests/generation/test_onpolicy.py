"""On-policy (GKD) distillation: what is sampled, from whom, with which gradients, and how often."""

import copy

import pytest
import torch
from lightning.pytorch import Trainer

import lit_distill.generation.modules as modules
from lit_distill import DistillationModule
from lit_distill.data import PromptDataModule
from lit_distill.generation import OnPolicyDistillationModule
from lit_distill.generation.sampling import IGNORE_INDEX, completion_batch, prompts_from_batch
from lit_distill.losses import TokenKD
from lit_distill.losses import functional as LF
from lit_distill.models import GPT

EOS, PAD = 256, 257


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny decode steps: one thread is much faster


def gpt(seed, width):
    torch.manual_seed(seed)
    return GPT(block_size=64, n_layer=1, n_head=2, n_embd=width, tokenizer_id="bytes")


def data(batch_size=4):
    return PromptDataModule(prompt_chars=20, response_chars=16, seq_len=48, batch_size=batch_size, max_prompts=24)


def batch_of(batch_size=4):
    return next(iter(data(batch_size).train_dataloader()))


def make(lmbda, losses=None, **kwargs):
    losses = losses or [TokenKD(divergence="jsd", beta=0.5, fused=False)]
    kwargs.setdefault("max_new_tokens", 8)
    return OnPolicyDistillationModule(
        student=gpt(0, 16),
        teacher=gpt(1, 32),
        losses=losses,
        lmbda=lmbda,
        eos_token_id=EOS,
        pad_token_id=PAD,
        allow_untrained_teacher=True,  # random GPTs: the tests check the mechanics
        **kwargs,
    )


def fit(module, steps=3):
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=data())
    return trainer


class Spy:
    """Wraps ``generate`` in lit_distill.generation.modules and records how each call ran."""

    def __init__(self, monkeypatch):
        self.calls = []
        self.real = modules.generate
        monkeypatch.setattr(modules, "generate", self)

    def __call__(self, model, *args, **kwargs):
        seen = []  # (train mode, grad enabled) of every forward pass the sampling makes
        hook = model.register_forward_pre_hook(lambda m, _: seen.append((m.training, torch.is_grad_enabled())))
        try:
            out = self.real(model, *args, **kwargs)
        finally:
            hook.remove()
        self.calls.append({"model": model, "forwards": seen, "out": out})
        return out


def test_lambda_zero_equals_the_off_policy_loss_exactly(monkeypatch):
    spy = Spy(monkeypatch)
    ours = make(0.0)
    plain = DistillationModule(
        student=copy.deepcopy(ours.student),
        teacher=copy.deepcopy(ours.teacher),
        losses=[TokenKD(divergence="jsd", beta=0.5, fused=False)],
        allow_untrained_teacher=True,
    )
    batch = batch_of()
    for idx in range(4):
        a, b = ours.training_step(batch, idx), plain.training_step(batch, idx)
        assert torch.equal(a, b)
    a.backward(), b.backward()
    for p, q in zip(ours.student.parameters(), plain.student.parameters()):
        assert torch.equal(p.grad, q.grad)
    assert spy.calls == []


def test_lambda_one_always_samples_and_half_about_half(monkeypatch):
    spy = Spy(monkeypatch)
    module = make(1.0)
    batch = batch_of()
    for idx in range(3):
        module.training_step(batch, idx)
    assert len(spy.calls) == 3
    never, half, other = make(0.0), make(0.5, seed=7), make(0.5, seed=8)
    assert all(module.draw(i) for i in range(500)) and not any(never.draw(i) for i in range(500))
    draws = [half.draw(i) for i in range(1000)]
    assert 400 < sum(draws) < 600 and draws == [half.draw(i) for i in range(1000)]
    assert draws != [other.draw(i) for i in range(1000)]


def test_student_samples_are_detached_and_drawn_in_eval_mode(monkeypatch):
    spy = Spy(monkeypatch)
    module = make(1.0)
    module.train()
    batch = batch_of()
    loss = module.training_step(batch, 0)
    call = spy.calls[-1]
    assert call["model"] is module.student and call["forwards"] and module.student.training
    assert not any(training or grad for training, grad in call["forwards"])  # eval mode, no autograd graph
    assert not call["out"].requires_grad
    loss.backward()
    # The gradient is that of the loss on a fixed batch of samples: nothing flows through the sampling.
    sampled = module.sample_batch(batch, seed=module._sample_seed(0, "train"))
    prompt_ids, prompt_mask = prompts_from_batch(batch, PAD)
    used = completion_batch(prompt_ids, prompt_mask, call["out"], EOS, PAD)
    assert all(torch.equal(used[k], sampled[k]) for k in used)  # same seed, same samples
    assert not any(v.requires_grad for v in sampled.values())
    fixed = make(0.0)
    fixed.student.load_state_dict(module.student.state_dict())
    again = fixed.training_step(sampled, 0)
    again.backward()
    assert torch.allclose(loss, again)
    for p, q in zip(module.student.parameters(), fixed.student.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-7)


def test_loss_counts_only_the_generated_tokens():
    module = make(1.0)
    batch = batch_of()
    sampled = module.sample_batch(batch, seed=0)
    prompt_lens = (batch["labels"] == IGNORE_INDEX).logical_and(batch["attention_mask"].bool()).sum(1)
    for row, n in zip(sampled["labels"], prompt_lens):
        assert (row[:n] == IGNORE_INDEX).all() and (row[n] != IGNORE_INDEX)
    s_logits = module.student(sampled["input_ids"], sampled["attention_mask"])
    t_logits = module.teacher(sampled["input_ids"], sampled["attention_mask"])
    mask = sampled["labels"][:, 1:] != IGNORE_INDEX
    expected = LF.divergence("jsd", s_logits[:, :-1], t_logits[:, :-1], beta=0.5, mask=mask)
    total, _, _, _ = module.shared_step(sampled)
    assert torch.allclose(total, expected, atol=1e-6)


def test_seq_kd_mode_samples_from_the_teacher(monkeypatch):
    spy = Spy(monkeypatch)
    module = make(1.0, mode="seq_kd")
    module.training_step(batch_of(), 0)
    assert spy.calls[-1]["model"] is module.teacher


def test_fit_keeps_the_teacher_frozen_and_logs_generation(monkeypatch):
    module = make(1.0, val_sample_nll=True)
    teacher_before = copy.deepcopy(module.teacher.state_dict())
    student_before = copy.deepcopy(module.student.state_dict())
    trainer = fit(module, steps=3)
    assert all(torch.equal(v, teacher_before[k]) for k, v in module.teacher.state_dict().items())
    assert any(not torch.equal(v, student_before[k]) for k, v in module.student.state_dict().items())
    assert not module.teacher.training and not any(p.requires_grad for p in module.teacher.parameters())
    assert all(p.grad is None for p in module.teacher.parameters())
    metrics = trainer.callback_metrics
    assert float(metrics["train/sampled"]) == 1.0 and float(metrics["train/gen_tokens_per_s"]) > 0
    assert float(metrics["train/gen_tokens"]) > 0 and torch.isfinite(metrics["val/teacher_nll_of_samples"])


@pytest.mark.parametrize(
    "kwargs, word",
    [({"lmbda": 1.5}, "lmbda"), ({"mode": "beam"}, "mode"), ({"temperature": -1.0}, "temperature")],
)
def test_bad_settings_fail_early(kwargs, word):
    with pytest.raises(ValueError, match=word):
        make(**{"lmbda": 0.5, **kwargs})
    with pytest.raises(ValueError, match="teacher"):
        OnPolicyDistillationModule(student=gpt(0, 16), teacher=None)


def test_samples_stop_at_the_block_size_and_a_full_prompt_is_refused():
    module = make(1.0, max_new_tokens=500)
    sampled = module.sample_batch(batch_of(), seed=0)
    assert sampled["input_ids"].shape[1] <= module.student.block_size
    full = {"input_ids": torch.zeros(2, 65, dtype=torch.long), "labels": torch.full((2, 65), IGNORE_INDEX)}
    full["labels"][:, -1] = 1
    with pytest.raises(ValueError, match="block_size=64"):
        module.sample_batch(full)
