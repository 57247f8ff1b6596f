"""The resumable training order: seeded per epoch, split by data-parallel rank, fast-forwarded per rank on resume,
and an error inside the data path that names the sampler, the dataset and the sample indices."""

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import Dataset, DistributedSampler

from lit_distill.cli.errors import describe
from lit_distill.data import DigitsDataModule, TextDataModule
from lit_distill.data.resumable import EpochShuffleSampler, ResumableLoader, TrainingDataError


def test_one_rank_sees_the_seeded_permutation_of_its_epoch():
    sampler = EpochShuffleSampler(10, seed=3)
    sampler.set_epoch(2)
    assert list(sampler) == torch.randperm(10, generator=torch.Generator().manual_seed(5)).tolist()
    assert list(EpochShuffleSampler(4, shuffle=False)) == [0, 1, 2, 3]


@pytest.mark.parametrize("size", [10, 11])
def test_ranks_split_the_epoch_like_a_distributed_sampler(size):
    """Equal shares (padded by repeating samples), together the whole dataset, as torch's DistributedSampler."""
    shares = []
    for rank in range(3):
        sampler = EpochShuffleSampler(size, seed=1, num_replicas=3, rank=rank)
        sampler.set_epoch(4)
        reference = DistributedSampler(range(size), num_replicas=3, rank=rank, shuffle=True, seed=1)
        reference.set_epoch(4)
        assert list(sampler) == list(reference) and len(sampler) == len(reference)
        shares.append(list(sampler))
    assert len({len(share) for share in shares}) == 1
    assert set(sum(shares, [])) == set(range(size))


def test_skip_drops_the_start_of_this_ranks_share_once_and_only_in_its_epoch():
    sampler = EpochShuffleSampler(20, seed=0, num_replicas=2, rank=1)
    whole = sampler.order()
    sampler.skip(4, epoch=0)
    assert list(sampler) == whole[4:] and len(sampler) == 10  # Lightning counts batches of the whole epoch
    assert list(sampler) == whole  # once
    sampler.skip(4, epoch=0)
    sampler.set_epoch(1)  # a checkpoint written at the end of epoch 0 resumes into epoch 1 from its start
    assert len(list(sampler)) == 10


def test_lightning_uses_the_sampler_as_it_is_under_data_parallel_strategies():
    """A DistributedSampler is never wrapped by Lightning's DistributedSamplerWrapper (which read a skipped sampler
    as a shorter list and failed with IndexError on resume)."""
    from lightning.pytorch.trainer.connectors.data_connector import _DataConnector

    data = DigitsDataModule(batch_size=8)
    data.setup("fit")
    data.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": 1})
    loader = data.train_dataloader()
    assert isinstance(loader.sampler, DistributedSampler)
    assert (loader.sampler.num_replicas, loader.sampler.rank) == (2, 1)
    connector = _DataConnector(SimpleNamespace(_accelerator_connector=SimpleNamespace(
        use_distributed_sampler=True, is_distributed=True)))  # fmt: skip
    assert not connector._requires_distributed_sampler(loader)


class FakeTrainer(SimpleNamespace):
    """What ``ResumableTrainData.state_dict`` reads of a trainer."""

    def __init__(self, processed: int, replicas: int = 1):
        progress = SimpleNamespace(current=SimpleNamespace(processed=processed))
        super().__init__(
            fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
            current_epoch=0,
            distributed_sampler_kwargs={"num_replicas": replicas, "rank": 0} if replicas > 1 else None,
        )


def test_a_resumed_datamodule_skips_the_batches_each_rank_trained():
    saved = DigitsDataModule(batch_size=8)
    saved.trainer = FakeTrainer(processed=3, replicas=2)
    state = saved.state_dict()
    assert state == {"epoch": 0, "batches_done": 3, "replicas": 2}
    resumed = DigitsDataModule(batch_size=8)
    resumed.setup("fit")
    resumed.load_state_dict(state)
    resumed.trainer = FakeTrainer(processed=0, replicas=2)
    loader = resumed.train_dataloader()
    assert [int(i) for i in loader.sampler] == loader.sampler.order()[24:]


def test_resuming_on_another_number_of_ranks_warns_that_the_order_changes():
    data = DigitsDataModule(batch_size=8)
    data.setup("fit")
    data.load_state_dict({"epoch": 0, "batches_done": 3, "replicas": 2})
    with pytest.warns(UserWarning, match="resuming on 1 data-parallel rank.* saved on 2"):
        data.train_dataloader()


class Breaks(Dataset):
    """Fails on one index, like a corrupted record."""

    def __init__(self, bad: int):
        self.bad = bad

    def __len__(self):
        return 40

    def __getitem__(self, index):
        if index == self.bad:
            raise IndexError("list index out of range")
        return torch.tensor(index)


@pytest.mark.parametrize("workers", [0, 1])
def test_an_error_in_the_data_path_names_the_sampler_dataset_and_indices(workers):
    sampler = EpochShuffleSampler(40, seed=0)
    bad = sampler.order()[13]  # in the fourth batch of 4
    loader = ResumableLoader(Breaks(bad), batch_size=4, sampler=sampler, num_workers=workers)
    with pytest.raises(TrainingDataError) as info:
        list(loader)
    message = str(info.value)
    assert "batch 3 of epoch 0" in message and f"{bad}" in message
    assert "Breaks of 40 samples" in message and "EpochShuffleSampler(size=40" in message
    assert "IndexError" in message


def test_after_a_resume_the_error_counts_batches_of_the_whole_epoch():
    sampler = EpochShuffleSampler(40, seed=0)
    bad = sampler.order()[13]
    sampler.skip(8)
    with pytest.raises(TrainingDataError, match=r"batch 3 of epoch 0 .*resumed after 8 samples"):
        list(ResumableLoader(Breaks(bad), batch_size=4, sampler=sampler))


def test_the_command_line_prints_the_data_error_first_even_when_library_code_raised_it():
    """The CLI prints the innermost error raised by lit-distill code: a failure inside the library's own collate
    function must still come out with the indices, not as its bare self."""
    data = TextDataModule(seq_len=16, batch_size=4, max_blocks=40)
    data.setup("fit")
    data.splits["train"][5] = data.splits["train"][5][:3]  # a damaged block: the batch cannot be stacked
    loader = data.train_dataloader()
    position = loader.sampler.order().index(5)
    with pytest.raises(TrainingDataError) as info:
        list(loader)
    first = describe(info.value, [], [])[0]
    assert first.startswith(f"TrainingDataError: reading the training data failed at batch {position // 4} of epoch 0")
    batch = loader.sampler.order()[position // 4 * 4 :][:4]
    assert f"(sample indices {batch})" in first and "RuntimeError" in first
