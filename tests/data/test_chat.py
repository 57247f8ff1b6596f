"""Chat JSONL rendered with the tokenizer's own template: assistant-only labels, prompts, and clear errors."""

import json
from pathlib import Path

import pytest

import lit_distill
from lit_distill.data.chat import PYDOC_CHAT, ChatDataModule, read_conversations
from lit_distill.data.text import IGNORE_INDEX
from lit_distill.data.tokenizers import HFTokenizer
from lit_distill.generation.sampling import prompts_from_batch
from tests.configs.test_text_configs import make_tiny_hf_models

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["def f(x): return x + 1", "The assert statement checks a condition.", "Tell me more about Python."] * 20


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    """A tiny BPE tokenizer with a ChatML template and the same one without a template, both built offline."""
    root = tmp_path_factory.mktemp("tok")
    make_tiny_hf_models().build_chat_tokenizer(300, texts=TEXTS).save_pretrained(str(root / "chat"))
    make_tiny_hf_models().build_tokenizer(300, texts=TEXTS).save_pretrained(str(root / "plain"))
    return root


CONVERSATIONS = [
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is assert?"},
        {"role": "assistant", "content": "A check."},
        {"role": "user", "content": "More?"},
        {"role": "assistant", "content": "It raises AssertionError."},
    ],
    [{"role": "user", "content": "def f?"}, {"role": "assistant", "content": "A function."}],
]


def write(path, conversations):
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations))
    return str(path)


def batch_of(dm):
    return next(iter(dm.train_dataloader()))


def labelled_pieces(ids, labels):
    """Runs of consecutive labelled tokens, as token lists."""
    runs, current = [], []
    for token, label in zip(ids.tolist(), labels.tolist()):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


@pytest.mark.parametrize("turns", ["all", "last"])
def test_labels_cover_exactly_the_assistant_answers_and_their_end_of_turn(tmp_path, tokenizer_dirs, turns):
    path = write(tmp_path / "chat.jsonl", CONVERSATIONS)
    dm = ChatDataModule(path, str(tokenizer_dirs / "chat"), assistant_turns=turns, batch_size=2, val_fraction=0.0)
    dm.setup()
    hf = dm.tokenizer.tokenizer
    for row, messages in zip(dm.encode_rows("all"), CONVERSATIONS):
        ids, labels = row["input_ids"], row["labels"]
        rendered = hf.apply_chat_template(messages, tokenize=False)
        assert hf.decode(ids) == rendered[: rendered.rindex("<|im_end|>") + len("<|im_end|>")]  # the template's text
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        expected = [a + "<|im_end|>" for a in (answers if turns == "all" else answers[-1:])]
        assert [hf.decode(run) for run in labelled_pieces(ids, labels)] == expected
    batch = batch_of(dm)  # right-padded: padding is never learned
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_prompts_are_the_conversation_up_to_the_last_answer_with_the_generation_prompt(tmp_path, tokenizer_dirs):
    unanswered = [{"role": "user", "content": "Why?"}]
    path = write(tmp_path / "chat.jsonl", [*CONVERSATIONS, unanswered])
    dm = ChatDataModule(path, str(tokenizer_dirs / "chat"), val_fraction=0.0)
    dm.setup("predict")
    hf = dm.tokenizer.tokenizer
    expected = [
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is assert?<|im_end|>\n<|im_start|>assistant\n"
        "A check.<|im_end|>\n<|im_start|>user\nMore?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\ndef f?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n",
    ]
    assert next(iter(dm.predict_dataloader()))["prompt"] == expected
    assert hf.apply_chat_template(unanswered, tokenize=False, add_generation_prompt=True) == expected[2]
    # On-policy sampling reads the same prompt back from a training batch (assistant_turns: last).
    last = ChatDataModule(
        write(tmp_path / "answered.jsonl", CONVERSATIONS),
        str(tokenizer_dirs / "chat"),
        assistant_turns="last",
        val_fraction=0,
    )
    ids, mask = prompts_from_batch(batch_of(last), dm.tokenizer.pad_id)
    assert sorted(hf.decode(row[m.bool()]) for row, m in zip(ids, mask)) == sorted(expected[:2])  # shuffled


def test_a_tokenizer_without_a_chat_template_is_named_with_the_fix(tmp_path, tokenizer_dirs):
    path = write(tmp_path / "chat.jsonl", CONVERSATIONS)
    plain = str(tokenizer_dirs / "plain")
    with pytest.raises(ValueError, match=rf"tokenizer '{plain}' has no chat template.*chat_template:"):
        ChatDataModule(path, plain).setup()
    with pytest.raises(ValueError, match="'bytes'.*Set `tokenizer:`"):
        ChatDataModule(path, "bytes").setup()
    template = tmp_path / "chatml.jinja"
    chatml = make_tiny_hf_models().CHATML
    template.write_text(chatml)
    dm = ChatDataModule(path, plain, chat_template=str(template), val_fraction=0.0)
    assert len(batch_of(dm)["input_ids"]) == 2 and dm.tokenizer.tokenizer.chat_template == chatml
    with pytest.raises(FileNotFoundError, match="neither a Jinja template nor"):
        ChatDataModule(path, plain, chat_template="missing.jinja").setup()


def test_a_conversation_without_an_answer_is_refused_for_training_with_its_line(tmp_path, tokenizer_dirs):
    path = write(tmp_path / "chat.jsonl", [*CONVERSATIONS, [{"role": "user", "content": "Hi"}]])
    dm = ChatDataModule(path, str(tokenizer_dirs / "chat"), val_fraction=0.0)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'chat.jsonl'}:3: the conversation has no assistant turn"):
        dm.train_dataloader()


def test_a_prompt_longer_than_the_context_is_refused_with_its_line_and_lengths(tmp_path, tokenizer_dirs):
    long = [{"role": "user", "content": "Tell me more about Python. " * 30}, {"role": "assistant", "content": "No."}]
    path = write(tmp_path / "chat.jsonl", [CONVERSATIONS[1], long])
    dm = ChatDataModule(path, str(tokenizer_dirs / "chat"), seq_len=40)
    with pytest.raises(ValueError, match=r"chat.jsonl:2: the prompt .* is \d+ tokens, and seq_len is 40"):
        dm.setup()


@pytest.mark.parametrize(
    "line, word",
    [("not json", "not valid JSON"), ('{"text": "x"}', "expected"), ('{"messages": [{"role": "user"}]}', "content")],
)
def test_malformed_lines_name_file_and_line(tmp_path, line, word):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": CONVERSATIONS[1]}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"chat.jsonl:2.*{word}"):
        read_conversations(path)


def test_the_shipped_example_renders_with_the_tiny_chat_tokenizer(tokenizer_dirs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default data ships with the package: any working directory will do
    dm = ChatDataModule(tokenizer=str(tokenizer_dirs / "chat"), seq_len=2048)
    dm.setup()
    assert Path(dm.prompts_path) == PYDOC_CHAT
    assert len(dm.splits["all"]) >= 50 and isinstance(dm.tokenizer, HFTokenizer)
    batch = batch_of(dm)
    assert bool((batch["labels"] != IGNORE_INDEX).any(-1).all()) and batch["input_ids"].shape[1] <= 2048


def test_the_default_conversations_are_package_data_of_an_installed_wheel():
    tomllib = pytest.importorskip("tomllib")
    package = Path(lit_distill.__file__).parent
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert PYDOC_CHAT.is_file() and any(PYDOC_CHAT.relative_to(package).match(g) for g in declared["lit_distill"])


def test_a_chat_data_module_without_a_tokenizer_says_what_it_needs():
    with pytest.raises(ValueError, match="needs `tokenizer`"):
        ChatDataModule()
