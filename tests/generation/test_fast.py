"""The static-cache sampler: the plain path's tokens, seeded samples, bounded compilation, explicit fallback."""

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import lit_distill.generation.fast as fast_module
from lit_distill.generation import generate
from lit_distill.generation.fast import FastSampler, bucketed, fast_sampler
from lit_distill.generation.sampling import left_pad
from lit_distill.models import GPT
from lit_distill.models.next_token import race_key, spec_for

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny decode steps: one thread is much faster


def tiny_gpt(**kwargs):
    torch.manual_seed(0)
    return GPT(**{"block_size": 96, "n_layer": 2, "n_head": 2, "n_embd": 32, "tokenizer_id": "bytes", **kwargs})


def tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, eos_token_id=299, pad_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=300, n_positions=96, n_embd=32, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config)


@pytest.fixture(scope="module")
def hf_wrapper(tmp_path_factory):
    """An HFCausalLM whose head has 300 rows of which only the first 280 are tokens."""
    from lit_distill.models.hf import HFCausalLM

    folder = tmp_path_factory.mktemp("hf") / "gpt2"
    tiny_gpt2().save_pretrained(str(folder))
    model = HFCausalLM(str(folder))
    model.vocab_size = 280
    return model


MODELS = {"gpt": tiny_gpt, "llama": tiny_llama, "gpt2": tiny_gpt2}
PROMPTS = [[104, 105, 106, 107, 108], [120], [50, 51, 52]]  # mixed lengths: left padding of 0, 4 and 2 tokens
PAD = 257


def build(kind, hf_wrapper):
    return hf_wrapper if kind == "wrapper" else MODELS[kind]()


def fast(model, ids, mask, backend=None, **kwargs):
    """The static-cache path, eager (backend None) or compiled with ``backend``, no graph breaks allowed."""
    options = {"compile": backend is not None, "backend": backend or "inductor", "fullgraph": True}
    if backend != "inductor":
        options["mode"] = None
    sampler = FastSampler(**options)
    settings = {k: kwargs[k] for k in ("max_new_tokens", "top_k", "top_p") if k in kwargs}
    settings["temperature"] = kwargs.get("temperature", 0.0)
    spec = spec_for(model, kwargs.get("eos_token_id"), kwargs.get("pad_token_id"), **settings)
    key = race_key(kwargs["seed"]) if "seed" in kwargs else None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return sampler.generate(model, ids, mask, spec, key)
    finally:
        model.train(was_training)


# "aot_eager" runs the step through torch.compile's tracing (dynamo + functionalized in-place updates) without
# code generation: what can break in compiling it breaks here, in seconds.
@pytest.mark.parametrize(
    "kind, backend", [("gpt", None), ("gpt", "aot_eager"), ("llama", None), ("llama", "aot_eager"),
                      ("gpt2", None), ("wrapper", None)],
)  # fmt: skip
def test_greedy_is_the_plain_path_token_for_token(kind, backend, hf_wrapper):
    model = build(kind, hf_wrapper)
    ids, mask = left_pad(PROMPTS, PAD)
    width, n = ids.shape[1], 24
    free = generate(model, ids, mask, max_new_tokens=n, temperature=0.0, eos_token_id=None, pad_token_id=PAD)
    if backend is None:  # one compilation per test is enough for the compiled variants
        assert torch.equal(fast(model, ids, mask, backend, max_new_tokens=n, pad_token_id=PAD), free)
    # eos on row 0's third token: that row stops and is padded, the others run on
    eos = int(free[0, width + 2])
    plain = generate(model, ids, mask, max_new_tokens=n, temperature=0.0, eos_token_id=eos, pad_token_id=PAD)
    ours = fast(model, ids, mask, backend, max_new_tokens=n, eos_token_id=eos, pad_token_id=PAD)
    assert torch.equal(ours, plain) and (ours[0, width:] == PAD).any()


@pytest.mark.parametrize("kind, backend", [("gpt", None), ("llama", "aot_eager")])
def test_every_row_finishing_stops_both_paths_at_the_same_step(kind, backend):
    model = MODELS[kind]()
    n, head = 24, [104, 105, 106]
    y = generate(model, torch.tensor([head]), max_new_tokens=n, temperature=0.0)[0, 3:].tolist()
    # Prompts that are one text cut at three places continue it in step: an eos on a later token of it ends
    # every row, each at a different step (the latest-appearing token makes those steps differ most).
    ids, mask = left_pad([head, head + y[:2], head + y[:5]], PAD)
    eos = max(y[5:], key=y.index)
    plain = generate(model, ids, mask, max_new_tokens=n, temperature=0.0, eos_token_id=eos, pad_token_id=PAD)
    ours = fast(model, ids, mask, backend, max_new_tokens=n, eos_token_id=eos, pad_token_id=PAD)
    assert torch.equal(ours, plain)
    assert ours.shape[1] == ids.shape[1] + y.index(eos) + 1 < ids.shape[1] + n  # stopped early, all rows done


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_seeded_sampling_repeats_and_follows_top_k_top_p(kind):
    model = MODELS[kind]()
    ids, mask = left_pad(PROMPTS, PAD)
    args = {"max_new_tokens": 16, "temperature": 1.0, "pad_token_id": PAD}
    a, b = fast(model, ids, mask, seed=3, **args), fast(model, ids, mask, seed=3, **args)
    c = fast(model, ids, mask, seed=4, **args)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = fast(model, ids, mask, max_new_tokens=16, pad_token_id=PAD)
    assert torch.equal(fast(model, ids, mask, seed=5, top_k=1, **args), greedy)
    assert torch.equal(fast(model, ids, mask, seed=5, top_p=1e-6, **args), greedy)


def test_seeded_samples_of_a_gpt_are_the_same_on_both_paths():
    model = tiny_gpt()
    ids, mask = left_pad(PROMPTS, PAD)
    for args in ({"top_k": 20}, {"top_p": 0.9}, {}):
        plain = generate(model, ids, mask, max_new_tokens=16, temperature=1.0, seed=7, pad_token_id=PAD, **args)
        ours = fast(model, ids, mask, max_new_tokens=16, temperature=1.0, seed=7, pad_token_id=PAD, **args)
        assert torch.equal(ours, plain), args  # one spec, one next-token function, one stream of draws


def test_padded_vocabulary_rows_are_never_sampled(hf_wrapper):
    gpt = tiny_gpt(vocab_size=258, padded_vocab_size=320)
    ids, mask = left_pad(PROMPTS, PAD)
    for model, real in ((gpt, 258), (hf_wrapper, 280)):
        out = fast(model, ids, mask, max_new_tokens=40, temperature=5.0, seed=0, pad_token_id=PAD)
        assert int(out[:, ids.shape[1] :].max()) < real  # at T=5 a padded row would show up: P(miss) < 1e-11


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_one_compilation_per_length_bucket(kind):
    model = MODELS[kind]().eval()
    counter = CompileCounter()
    sampler = FastSampler(backend=counter, mode=None, fullgraph=True, bucket=64)
    with torch.no_grad():
        for prompts, n in (([[5, 6, 7], [8]], 10), ([[5, 6, 7, 8, 9], [8]], 20), ([[1, 2], [3, 4]], 40)):
            spec = spec_for(model, None, PAD, max_new_tokens=n, temperature=1.0)
            sampler.generate(model, *left_pad(prompts, PAD), spec, race_key(0))
        assert counter.frame_count == 1  # prompts of 3..5 tokens + up to 40 new ones: all in the 64-slot bucket
        spec = spec_for(model, None, PAD, max_new_tokens=10, temperature=1.0)
        sampler.generate(model, *left_pad([list(range(1, 61))], PAD), spec)
    assert counter.frame_count == 2  # 70 slots: the 128 bucket


def test_length_buckets_grow_geometrically():
    sizes = {bucketed(n, 64) for n in range(1, 4097)}
    assert sorted(sizes)[:6] == [64, 128, 192, 256, 320, 384] and max(sizes) == 4096
    assert len(sizes) <= 4 * 6 + 4  # 64-steps up to 256, then at most 4 sizes per doubling
    assert all(n <= bucketed(n, 64) <= 1.25 * n or bucketed(n, 64) - n < 64 for n in range(1, 4097))


def test_fast_modes_pick_the_path(monkeypatch):
    gpt = tiny_gpt()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert fast_sampler(gpt, False, cuda) is None
    for bad in ("on", "always", 1):
        with pytest.raises(ValueError, match="'auto'.*true.*false"):
            generate(gpt, torch.tensor([[1, 2]]), fast=bad)
    monkeypatch.setitem(fast_module.DEFAULT_COMPILE, "compile", False)
    assert isinstance(fast_sampler(gpt, True, cpu), FastSampler)


def unsupported_models():
    """Each known reason for the plain path: (model, device, compiler works, words of the reason)."""
    llama = tiny_llama()
    llama.generation_config.repetition_penalty = 1.3  # only transformers' generate applies it
    sharded = tiny_gpt()
    sharded.pretend_sharded = True  # the real case (DTensor weights) runs in tests/generation/test_ranks_in_step.py
    cuda = torch.device("cuda")
    return [
        (tiny_gpt(), torch.device("cpu"), True, "on cpu"),
        (tiny_gpt(), cuda, False, "torch.compile is not available"),
        (llama, cuda, True, "repetition_penalty"),
        (torch.nn.Linear(2, 2), cuda, True, "neither a lit-distill GPT"),
        (sharded, cuda, True, "sharded"),
    ]


@pytest.mark.parametrize("case", range(5))
def test_auto_takes_the_plain_path_for_each_known_reason_said_once(case, monkeypatch, caplog):
    model, device, compiles, words = unsupported_models()[case]
    monkeypatch.setattr(fast_module, "compiler_available", lambda: compiles)
    monkeypatch.setattr(fast_module, "is_sharded", lambda m: getattr(m, "pretend_sharded", False))
    with caplog.at_level("INFO"):
        assert fast_sampler(model, "auto", device) is None and fast_sampler(model, "auto", device) is None
    said = [r.getMessage() for r in caplog.records if "fast sampling off" in r.getMessage()]
    assert len(said) == 1 and words in said[0] and "plain path" in said[0]
    if words not in ("on cpu", "torch.compile is not available"):  # the model's own reasons: True refuses
        with pytest.raises(ValueError, match=words):
            fast_sampler(model, True, torch.device("cpu"))


@pytest.mark.parametrize("error", [RuntimeError("no CUDA graph today"), torch.OutOfMemoryError("CUDA out of memory")])
def test_auto_raises_a_failure_of_the_fast_path_instead_of_switching(error, monkeypatch):
    gpt = tiny_gpt()
    ids, mask = left_pad(PROMPTS, PAD)

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setitem(fast_module.DEFAULT_COMPILE, "compile", False)
    monkeypatch.setattr(FastSampler, "generate", broken)
    monkeypatch.setattr(fast_module, "auto_reason", lambda device: None)  # as on CUDA with a working compiler
    for fast in (True, "auto", "auto"):  # every call: the error is raised, never swallowed
        with pytest.raises(type(error), match=str(error)) as raised:
            generate(gpt, ids, mask, max_new_tokens=6, temperature=0.0, fast=fast)
        assert "fast: false" in "".join(getattr(raised.value, "__notes__", []))
        raised.value.__notes__.clear()
    assert isinstance(fast_sampler(gpt, "auto", torch.device("cpu")), FastSampler)


def test_samplers_are_kept_on_the_model_and_not_copied_with_it(monkeypatch):
    import copy
    import pickle

    monkeypatch.setitem(fast_module.DEFAULT_COMPILE, "compile", False)
    gpt, cpu = tiny_gpt(), torch.device("cpu")
    sampler = fast_sampler(gpt, True, cpu)
    assert fast_sampler(gpt, True, cpu) is sampler and fast_sampler(tiny_gpt(), True, cpu) is not sampler
    assert fast_sampler(torch.compile(gpt), True, cpu) is sampler  # a compiled wrapper shares its model's
    assert not hasattr(fast_module, "_SAMPLERS")  # no module-level cache
    for copied in (copy.deepcopy(gpt), pickle.loads(pickle.dumps(gpt))):
        assert fast_sampler(copied, True, cpu) is not sampler
        assert torch.equal(copied.head.weight, gpt.head.weight)


def test_block_size_overflow_is_the_users_error_on_both_paths():
    gpt = tiny_gpt(block_size=16)
    with pytest.raises(ValueError, match="block_size"):
        fast(gpt, torch.ones(1, 10, dtype=torch.long), torch.ones(1, 10, dtype=torch.long), max_new_tokens=7)


@pytest.mark.skipif(
    os.environ.get("LIT_DISTILL_INDUCTOR_TESTS") != "1",
    reason="inductor's CPU code generation takes 20-60 s per graph on CI's 2 cores; the aot_eager tests trace the "
    "same step. Set LIT_DISTILL_INDUCTOR_TESTS=1 to run it.",
)
@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_inductor_compiled_step_matches_the_plain_path(kind):
    model = MODELS[kind]()
    ids, mask = left_pad(PROMPTS, PAD)
    plain = generate(model, ids, mask, max_new_tokens=12, temperature=0.0, pad_token_id=PAD)
    assert torch.equal(fast(model, ids, mask, "inductor", max_new_tokens=12, pad_token_id=PAD), plain)


def test_onpolicy_and_predict_modules_pass_fast_through(monkeypatch):
    from lit_distill.data import PromptDataModule
    from lit_distill.generation import GenerationModule, OnPolicyDistillationModule

    with pytest.raises(ValueError, match="fast must be"):
        OnPolicyDistillationModule(
            student=tiny_gpt(), teacher=tiny_gpt(), fast="on", eos_token_id=256, pad_token_id=PAD
        )
    with pytest.raises(ValueError, match="fast must be"):
        GenerationModule(model=tiny_gpt(), fast="yes")
    monkeypatch.setitem(fast_module.DEFAULT_COMPILE, "compile", False)
    calls = []
    real = FastSampler.generate
    monkeypatch.setattr(FastSampler, "generate", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    data = PromptDataModule(prompt_chars=20, response_chars=16, seq_len=48, batch_size=4, max_prompts=8)
    batch = next(iter(data.train_dataloader()))
    sampled = {}
    for setting in (True, False):
        module = OnPolicyDistillationModule(
            student=tiny_gpt(), teacher=tiny_gpt(), temperature=0.0, max_new_tokens=8, eos_token_id=256,
            pad_token_id=PAD, fast=setting,
        )  # fmt: skip
        sampled[setting] = module.sample_batch(batch)
    assert len(calls) == 1 and sampled[True].keys() == sampled[False].keys()
    assert all(torch.equal(sampled[True][k], sampled[False][k]) for k in sampled[True])
    rows = {}
    for setting in (True, False):
        module = GenerationModule(model=tiny_gpt(), max_new_tokens=6, temperature=0.0, fast=setting)
        rows[setting] = module.predict_step({"prompt": ["def f", "A list of"]}, 0)
        assert module.generation_settings()["fast"] is setting  # a resumed JSONL must not mix the two samplers
    assert len(calls) == 2 and rows[True] == rows[False]


def test_buffers_made_under_inference_mode_serve_later_calls(monkeypatch):
    # Lightning samples under inference_mode in validation and predict, and without it in training.
    monkeypatch.setitem(fast_module.DEFAULT_COMPILE, "compile", False)
    gpt = tiny_gpt()
    ids, mask = left_pad(PROMPTS, PAD)
    args = {"max_new_tokens": 6, "temperature": 0.0, "pad_token_id": PAD, "fast": True}
    with torch.inference_mode():
        first = generate(gpt, ids, mask, **args)
    second = generate(gpt, ids.clone(), mask.clone(), **args)
    assert torch.equal(first, second) and torch.equal(second, generate(gpt, ids, mask, **{**args, "fast": False}))


def test_on_policy_fit_samples_through_the_compiled_step_in_training_and_validation(monkeypatch):
    from lightning.pytorch import Trainer

    from lit_distill.data import PromptDataModule
    from lit_distill.generation import OnPolicyDistillationModule

    counter = CompileCounter()
    monkeypatch.setitem(fast_module.DEFAULT_COMPILE, "backend", counter)
    monkeypatch.setitem(fast_module.DEFAULT_COMPILE, "mode", None)
    module = OnPolicyDistillationModule(
        student=tiny_gpt(), teacher=tiny_gpt(n_layer=1), lmbda=1.0, max_new_tokens=8, val_sample_nll=True, fast=True,
        allow_untrained_teacher=True,
    )  # fmt: skip
    data = PromptDataModule(prompt_chars=20, response_chars=16, seq_len=48, batch_size=4, max_prompts=24)
    trainer = Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)  # sanity validation (inference mode), training, validation
    assert counter.frame_count >= 1 and float(trainer.callback_metrics["train/sampled"]) == 1.0
    assert torch.isfinite(trainer.callback_metrics["val/teacher_nll_of_samples"])


@pytest.mark.parametrize("recipe, value", [("on_policy", "on"), ("generate", "false"), ("on_policy", "auto")])
def test_recipes_take_fast_from_the_command_line_and_yaml_booleans(recipe, value, capsys):
    from lit_distill.cli import main

    config = Path(__file__).resolve().parents[2] / "configs" / "text" / f"{recipe}.yaml"
    with pytest.raises(SystemExit) as done:
        main(["fit" if recipe == "on_policy" else "predict", "--config", str(config), f"--model.init_args.fast={value}",
              "--print_config"])  # fmt: skip
    assert done.value.code == 0
    expected = {"on": "true", "false": "false", "auto": "auto"}[value]  # YAML reads on/off as booleans
    assert f"    fast: {expected}\n" in capsys.readouterr().out


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_decode_steps_run_nothing_outside_the_step_and_ask_the_host_nothing(temperature):
    """The step (forward, sampling with its random draws, eos bookkeeping) is the only work per decode step and
    reads no device value on the host: on a GPU it is one CUDA graph the host only launches. The finished-rows
    check reads one flag every 8 steps."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = {"outside": 0, "host reads": 0}
    inside = [False]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counts["host reads"] += func is torch.ops.aten._local_scalar_dense.default  # .item(), bool(), int()
            counts["outside"] += not inside[0]
            return func(*args, **(kwargs or {}))

    model, sampler = tiny_gpt().eval(), FastSampler(compile=False, check_every=8)
    step = sampler.step

    def counted_step(*args):
        inside[0] = True
        try:
            step(*args)
        finally:
            inside[0] = False

    sampler.step = counted_step
    ids, mask = left_pad(PROMPTS, PAD)
    spec = spec_for(model, 300, PAD, max_new_tokens=64, temperature=temperature)  # eos 300: never written
    seen = []
    for n in (32, 64):
        counts.update({"outside": 0, "host reads": 0})
        with torch.no_grad(), Count():
            out = sampler.generate(model, ids, mask, replace(spec, max_new_tokens=n), race_key(0))
        seen.append(dict(counts))
        assert out.shape[1] == ids.shape[1] + n
    assert seen[1]["host reads"] - seen[0]["host reads"] == 32 // 8  # 32 more steps: 4 more checks, no more
    assert seen[1]["outside"] - seen[0]["outside"] == 2 * 32 // 8  # only the checks' all() and its read


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_on_a_gpu_the_step_is_one_cuda_graph_that_samples_the_plain_paths_tokens(kind):
    from torch._dynamo.utils import counters

    counters.clear()
    model = MODELS[kind]().cuda().eval()
    ids, mask = (t.cuda() for t in left_pad(PROMPTS, PAD))
    spec = spec_for(model, None, PAD, max_new_tokens=32, temperature=1.0, top_k=50)
    sampler = FastSampler()  # inductor, mode="reduce-overhead"
    with torch.no_grad():
        ours = [sampler.generate(model, ids, mask, spec, race_key(s, "cuda")) for s in (0, 0, 1)]
    assert counters["inductor"]["cudagraph_skips"] == 0  # replayed as a CUDA graph, noise included
    assert torch.equal(ours[0], ours[1]) and not torch.equal(ours[0], ours[2])
    if kind == "gpt":  # the plain path draws the same tokens (float32)
        plain = generate(model, ids, mask, max_new_tokens=32, temperature=1.0, top_k=50, pad_token_id=PAD, seed=0)
        assert torch.equal(ours[0], plain)
