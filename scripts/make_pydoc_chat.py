"""Write lit_distill/data/pydoc_chat.jsonl: chat conversations about Python built from CPython's bundled pydoc topics.

Each help topic gives one conversation: a system message, the user asking about the topic by its title, and the
topic's first prose paragraph as the assistant's answer; where the topic has a second prose paragraph, the user
asks for more and the assistant answers with it (two assistant turns). Answers are cut at a sentence end near
``--answer-chars``. Nothing is downloaded; the file ships inside the package
(ChatDataModule's default data), so recipes do not depend on the Python version or the working directory.

    python scripts/make_pydoc_chat.py           # -> lit_distill/data/pydoc_chat.jsonl
    python scripts/make_pydoc_chat.py --smoke   # the same conversations into a temporary file; prints the count
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

PACKAGED = Path(__file__).resolve().parents[1] / "lit_distill" / "data" / "pydoc_chat.jsonl"
SYSTEM = "You answer questions about Python from its reference documentation, briefly."


def _prose(topic: str) -> tuple[str, list[str]]:
    """The topic's title and its prose paragraphs (not code, grammar or headings), whitespace joined."""
    blocks = [b for b in re.split(r"\n\s*\n", topic) if b.strip()]
    title = re.sub(r"^The ", "the ", blocks[0].splitlines()[0].strip())
    paragraphs = []
    for block in blocks[1:]:
        lines = block.splitlines()
        if block.startswith(" ") or re.fullmatch(r"[*=\-\s]+", lines[-1]) or "::=" in block:
            continue
        paragraphs.append(" ".join(line.strip() for line in lines))
    return title, paragraphs


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    end = text.rfind(". ", 0, limit)
    return text[: end + 1] if end > limit // 3 else text[:limit].rsplit(" ", 1)[0] + " ..."


def conversations(answer_chars: int = 220) -> list[dict]:
    from pydoc_data.topics import topics

    rows = []
    for key in sorted(topics):
        title, paragraphs = _prose(topics[key])
        if not paragraphs:
            continue
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"What does the Python reference say about {title}?"},
            {"role": "assistant", "content": _cut(paragraphs[0], answer_chars)},
        ]
        if len(paragraphs) > 1:
            messages += [
                {"role": "user", "content": "Tell me more."},
                {"role": "assistant", "content": _cut(paragraphs[1], answer_chars)},
            ]
        rows.append({"messages": messages})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(PACKAGED))
    parser.add_argument("--answer-chars", type=int, default=220)
    parser.add_argument("--smoke", action="store_true", help="write into a temporary folder (the committed file stays)")
    args = parser.parse_args(argv)
    rows = conversations(args.answer_chars)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "pydoc_chat.jsonl") if args.smoke else Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"wrote {len(rows)} conversations to {out}")
    print(json.dumps({"conversations": len(rows), "turns": sum(len(r["messages"]) for r in rows)}))


if __name__ == "__main__":
    main()
