"""ModelOutput as a batch item: DataLoader's pinning reaches the cached teacher outputs inside it."""

import torch
from torch.utils.data._utils.pin_memory import pin_memory

from lit_distill.batch import TEACHER_OUTPUTS_KEY
from lit_distill.outputs import ModelOutput


def test_dataloader_pinning_pins_every_tensor_of_cached_outputs(monkeypatch):
    # A CPU-only build cannot pin memory; stand in a marker for Tensor.pin_memory to see what gets pinned.
    pinned = []

    def fake_pin(self, *args, **kwargs):
        copy = self.clone()
        pinned.append(copy)
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    head = torch.nn.Linear(2, 3)
    out = ModelOutput(
        logits=torch.ones(2, 3), features={"f": torch.zeros(2)}, head=head, extra={"topk_values": torch.ones(1), "n": 4}
    )
    batch = {"input_ids": torch.arange(4), TEACHER_OUTPUTS_KEY: out}
    got = pin_memory(batch)[TEACHER_OUTPUTS_KEY]
    assert isinstance(got, ModelOutput) and got is not out
    assert any(t is got.logits for t in pinned) and any(t is got.features["f"] for t in pinned)
    assert any(t is got.extra["topk_values"] for t in pinned) and got.extra["n"] == 4
    assert got.head is head and got.hidden is None
    assert torch.equal(got.logits, out.logits)
