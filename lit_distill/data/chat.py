"""Chat data as users have it: JSONL of ``{"messages": [{"role", "content"}, ...]}`` rendered with the tokenizer's
own chat template, the loss on assistant tokens only, and prompts (the conversation up to its last assistant turn,
with the generation prompt) for ``predict`` and on-policy distillation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from lit_distill.data.cross_tokenizer import Piece
from lit_distill.data.prompts import PromptDataModule, Split
from lit_distill.data.text import IGNORE_INDEX
from lit_distill.data.tokenizers import Tokenizer

Messages = list[dict[str, str]]
AssistantTurns = Literal["all", "last"]
#: The default conversations, shipped with the package: 79 chats about Python from CPython's pydoc topics
#: (regenerate with ``python scripts/make_pydoc_chat.py``).
PYDOC_CHAT = Path(__file__).with_name("pydoc_chat.jsonl")


class Conversation:
    """One JSONL line: its messages, and where it came from (for error messages)."""

    def __init__(self, messages: Messages, path: str, line: int) -> None:
        self.messages, self.where = messages, f"{path}:{line}"

    def assistant_turns(self) -> list[int]:
        return [i for i, m in enumerate(self.messages) if m["role"] == "assistant"]


def read_conversations(path: str | Path) -> list[Conversation]:
    """Every line of a JSONL file as a :class:`Conversation`; a malformed line is refused with its file and line.

    Example:
        >>> # {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
        >>> read_conversations("chat.jsonl")[0].messages[1]["role"]  # doctest: +SKIP
        'assistant'
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'chat file {str(path)!r} does not exist (JSONL, one {{"messages": [...]}} per line).')
    conversations = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not valid JSON ({err}).") from err
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not messages:
            raise ValueError(
                f'{where}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}, got {line[:80]!r}.'
            )
        for i, message in enumerate(messages):
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise ValueError(f"{where}: message {i} needs a string 'role' and a string 'content', got {message!r}.")
        conversations.append(Conversation(messages, str(path), number))
    if not conversations:
        raise ValueError(f"chat file {str(path)!r} holds no conversations.")
    return conversations


def template_owner(tokenizer: Tokenizer, chat_template: str | None = None) -> Any:
    """The Hugging Face tokenizer that renders chats, with ``chat_template`` (a Jinja string or file) applied.

    Refuses, naming the tokenizer and the fix, a tokenizer that has no chat template.
    """
    hf = getattr(tokenizer, "tokenizer", None)
    if hf is None or not hasattr(hf, "apply_chat_template"):
        raise ValueError(
            f"chat data is rendered with a Hugging Face tokenizer's chat template, but the tokenizer is "
            f"{tokenizer.tokenizer_id!r} ({type(tokenizer).__name__}). Set `tokenizer:` to the folder (or hub id) of "
            "your model's tokenizer."
        )
    if chat_template is not None:
        if "{{" in chat_template or "{%" in chat_template:
            hf.chat_template = chat_template
        elif Path(chat_template).is_file():
            hf.chat_template = Path(chat_template).read_text(encoding="utf-8")
        else:
            raise FileNotFoundError(
                f"chat_template {chat_template!r} is neither a Jinja template nor an existing template file."
            )
    if not getattr(hf, "chat_template", None):
        name = getattr(hf, "name_or_path", "") or type(hf).__name__
        raise ValueError(
            f"tokenizer {name!r} has no chat template (tokenizer.chat_template is None), so chat messages cannot be "
            "rendered. Use the tokenizer of a chat/instruct model, or give one on the datamodule: "
            "`chat_template: path/to/template.jinja` (or the template string)."
        )
    return hf


def render(hf: Any, messages: Messages, generation_prompt: bool = False) -> str:
    return hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def chat_segments(hf: Any, conversation: Conversation, assistant_turns: AssistantTurns = "all") -> list[Piece]:
    """The rendered conversation (up to its last assistant turn) as ``(text, learned)`` pieces in order.

    An assistant turn's piece is what the template writes after the generation prompt, up to and including the
    tokenizer's eos (the end-of-turn token of chat tokenizers); what the template adds after it is not learned.
    """
    turns = conversation.assistant_turns()
    if not turns:
        raise ValueError(
            f"{conversation.where}: the conversation has no assistant turn, so there is nothing to learn; add one or "
            "drop the line (for `predict`, conversations without an answer are fine)."
        )
    learned = turns if assistant_turns == "all" else turns[-1:]
    eos = getattr(hf, "eos_token", None)
    pieces, done = [], ""
    for k in learned:
        prompt = render(hf, conversation.messages[:k], generation_prompt=True)
        full = render(hf, conversation.messages[: k + 1])
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ValueError(
                f"{conversation.where}: the chat template does not render this conversation turn by turn (earlier "
                "text changes when a turn is added), so assistant tokens cannot be located; use assistant_turns: last."
            )
        answer = full[len(prompt) :]
        cut = answer.find(eos) + len(eos) if eos and eos in answer else len(answer)
        pieces += [(prompt[len(done) :], False), (answer[:cut], True)]
        done = prompt + answer[:cut]
    return [(text, learn) for text, learn in pieces if text]


def encode_chat(
    hf: Any, conversation: Conversation, tokenizer: Tokenizer, seq_len: int, assistant_turns: AssistantTurns = "all"
) -> dict[str, Tensor]:
    """``{"input_ids", "labels"}`` of one conversation: labels on the learned assistant tokens only, -100 elsewhere.

    Each piece is tokenized on its own, so the prompt's tokens are exactly those of the rendered prompt that
    ``predict`` and on-policy sampling feed the model. Cut to ``seq_len``; a prompt that fills it is refused.
    """
    ids: list[int] = []
    labels: list[int] = []
    for text, learn in chat_segments(hf, conversation, assistant_turns):
        piece = tokenizer.encode(text)
        ids += piece
        labels += piece if learn else [IGNORE_INDEX] * len(piece)
    prompt = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), None)
    if prompt is None:
        raise ValueError(f"{conversation.where}: the assistant turns render to no tokens; give them some content.")
    if prompt >= seq_len:
        raise ValueError(
            f"{conversation.where}: the prompt before the first learned assistant token is {prompt} tokens, and "
            f"seq_len is {seq_len}: nothing of the answer fits. Raise seq_len or shorten the conversation."
        )
    return {"input_ids": torch.tensor(ids[:seq_len]), "labels": torch.tensor(labels[:seq_len])}


def chat_prompt(hf: Any, conversation: Conversation) -> str:
    """The conversation up to (not including) its last assistant turn, rendered with the generation prompt."""
    turns = conversation.assistant_turns()
    messages = conversation.messages[: turns[-1]] if turns else conversation.messages
    return render(hf, messages, generation_prompt=True)


class ChatDataModule(PromptDataModule):
    """Chat conversations from a JSONL file of ``{"messages": [{"role", "content"}, ...]}`` lines.

    Rendered with the tokenizer's own chat template (``apply_chat_template``). ``fit``/``validate``/``test``
    batches are instruction batches (right-padded, ``labels`` -100 everywhere except the learned assistant
    tokens: each turn's answer up to and including the end-of-turn eos). ``assistant_turns: all`` learns every
    assistant turn; ``last`` only the final one. ``predict`` batches are ``{"prompt": list[str]}``: each
    conversation up to its last assistant turn (or whole, if it has none) rendered with the generation prompt.

    On-policy and sequence-KD sampling read the prompt as the tokens before the first learned token, so with
    multi-turn data use ``assistant_turns: last`` there (the conversation up to the last assistant turn).

    Args:
        messages: the JSONL file; None: the conversations shipped with the package (:data:`PYDOC_CHAT`).
        tokenizer: a Hugging Face tokenizer folder / hub id that has a chat template (or see ``chat_template``).
        chat_template: a Jinja template (the string, or a file holding it) that replaces the tokenizer's own.
        assistant_turns: ``"all"`` or ``"last"`` assistant turns carry the loss.
        seq_len: longest example in tokens; a prompt that fills it is refused with its file and line.
        batch_size: conversations per batch.
        val_fraction: share of conversations for validation.
        test_fraction: share for testing.
        seed: split seed.
        max_prompts: keep only the first N conversations.
        predict_split: which split ``predict`` answers (``"all"`` = every conversation).
        num_workers: DataLoader workers.
        teacher_tokenizer: the teacher's own tokenizer when it differs from the student's: ``fit`` batches then
            carry both tokenizations of the rendered chat with byte offsets, assistant tokens learned on both
            sides (:mod:`lit_distill.data.cross_tokenizer`).
        teacher_seq_len: longest example in teacher tokens (None: ``seq_len``).

    Example (YAML)::

        data:
          class_path: lit_distill.data.chat.ChatDataModule
          init_args: {tokenizer: checkpoints/text/hf_tiny_chat/tokenizer}
    """

    def __init__(
        self,
        messages: str | None = None,
        tokenizer: str | None = None,
        chat_template: str | None = None,
        assistant_turns: AssistantTurns = "all",
        seq_len: int = 256,
        batch_size: int = 8,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        seed: int = 0,
        max_prompts: int | None = None,
        predict_split: Split = "all",
        num_workers: int = 0,
        teacher_tokenizer: str | None = None,
        teacher_seq_len: int | None = None,
    ) -> None:
        if tokenizer is None:
            raise ValueError(
                "ChatDataModule needs `tokenizer`: the folder (or hub id) of a Hugging Face tokenizer with a chat "
                "template, e.g. checkpoints/text/hf_tiny_chat/tokenizer from scripts/make_tiny_hf_models.py --chat."
            )
        if assistant_turns not in ("all", "last"):
            raise ValueError(f"assistant_turns must be 'all' or 'last', got {assistant_turns!r}.")
        # PromptDataModule's arguments in its order; prompt_chars/response_chars (48, 64) only shape its embedded set.
        messages = str(PYDOC_CHAT) if messages is None else messages
        args = (messages, tokenizer, 48, 64, seq_len, batch_size, val_fraction, test_fraction, seed, max_prompts)
        teacher = {"teacher_tokenizer": teacher_tokenizer, "teacher_seq_len": teacher_seq_len}
        super().__init__(*args, predict_split=predict_split, num_workers=num_workers, **teacher)
        self.chat_template, self.assistant_turns = chat_template, assistant_turns

    def load_rows(self) -> list[tuple[str, Any]]:
        hf = template_owner(self.tokenizer, self.chat_template)
        rows = []
        for conversation in read_conversations(self.prompts_path):
            prompt = chat_prompt(hf, conversation)
            length = len(self.tokenizer.encode(prompt))
            if length >= self.seq_len:
                raise ValueError(
                    f"{conversation.where}: the prompt (conversation up to its last assistant turn, rendered) is "
                    f"{length} tokens, and seq_len is {self.seq_len}, leaving no room for an answer. Raise seq_len "
                    "or shorten the conversation."
                )
            rows.append((prompt, conversation))
        return rows

    def encode_rows(self, split: str) -> list[dict[str, Tensor]]:
        hf = template_owner(self.tokenizer, self.chat_template)
        if self.teacher_tokenizer is not None:
            return [self._encode_both(hf, conversation) for _, conversation in self.splits[split]]
        return [
            encode_chat(hf, conversation, self.tokenizer, self.seq_len, self.assistant_turns)
            for _, conversation in self.splits[split]
        ]

    def _encode_both(self, hf: Any, conversation: Conversation) -> dict[str, Tensor]:
        row = self.encode_both(chat_segments(hf, conversation, self.assistant_turns))
        if row is None:
            raise ValueError(
                f"{conversation.where}: no assistant token fits seq_len={self.seq_len} student tokens and "
                f"teacher_seq_len={self.teacher_seq_len or self.seq_len} teacher tokens after the prompt (both sides "
                "are cut where they read the same text). Raise them or shorten the conversation."
            )
        return row
