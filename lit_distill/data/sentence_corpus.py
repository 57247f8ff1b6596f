"""English sentences from text that ships with Python, for distilling sentence encoders.

Sources need no download: CPython's bundled help topics (``pydoc_data.topics``) and the docstrings of
installed packages, read from their source files with :mod:`ast` (nothing is imported, so no package code
runs). Prose paragraphs are cut into sentences, filtered by length and letter share, and deduplicated.
Each sentence lands in ``train``, ``val`` or ``heldout`` by a seeded hash of its own text, so a held-out
sentence stays held out whatever other text is added or removed, and is never seen in training.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

#: Standard-library packages whose docstrings are read by default (present in every CPython).
DEFAULT_PACKAGES = (
    "argparse", "asyncio", "collections", "concurrent", "configparser", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "email", "enum", "fractions", "ftplib", "functools", "http", "imaplib", "importlib",
    "inspect", "json", "logging", "multiprocessing", "pathlib", "pydoc", "random", "shutil", "smtplib",
    "socket", "sqlite3", "ssl", "statistics", "subprocess", "tarfile", "textwrap", "threading", "typing",
    "unittest", "urllib", "xml", "zipfile",
)  # fmt: skip
SPLITS = ("train", "val", "heldout")
_PUNCT = set(",.;:!?'\"()-‘’“”")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_MARKUP = re.compile(r":[a-z]+:`~?([^`]*)`|``([^`]*)``|`([^`]*)`|\*\*?([^*]+)\*\*?")


def _prose_paragraphs(text: str) -> Iterator[str]:
    """Blank-line separated blocks with one indentation (indented prose is kept: the sentence filter drops code)."""
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.strip()]
        indents = {len(line) - len(line.lstrip()) for line in lines}
        if len(indents) != 1 or any(line.lstrip().startswith((">>>", "...", "$ ")) for line in lines):
            continue  # mixed indentation is code or a nested list; >>> and $ start examples
        yield " ".join(line.strip() for line in lines)


def split_sentences(text: str, min_words: int = 5, max_words: int = 40) -> list[str]:
    """Prose sentences of ``text`` with ``min_words``..``max_words`` words, reST markup removed.

    Args:
        text: documentation text (code blocks, indented or after ``>>>``, are skipped).
        min_words: drop shorter sentences (headings, fragments).
        max_words: drop longer ones (usually run-together lists).

    Example:
        >>> split_sentences("Lists are mutable sequences of items. Tuples are not, so they can be keys. Short one.")
        ['Lists are mutable sequences of items.', 'Tuples are not, so they can be keys.']
    """
    found = []
    for paragraph in _prose_paragraphs(text):
        paragraph = _MARKUP.sub(lambda m: next(g for g in m.groups() if g is not None), paragraph)
        for sentence in _SENTENCE_END.split(paragraph):
            sentence = " ".join(sentence.split())
            words = sentence.split()
            letters = sum(c.isalpha() or c.isspace() for c in sentence)
            plain = letters + sum(c in _PUNCT for c in sentence)
            # Prose ends like a sentence and is mostly letters; signatures, tables and code are not.
            if (
                min_words <= len(words) <= max_words
                and sentence[-1] in ".!?"
                and letters >= 0.75 * len(sentence)
                and plain >= 0.95 * len(sentence)
            ):
                found.append(sentence)
    return found


def pydoc_texts() -> list[str]:
    """CPython's bundled help topics (``pydoc_data.topics``), in sorted topic order.

    Example:
        >>> len(pydoc_texts()) > 50
        True
    """
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def docstring_texts(packages: Iterable[str]) -> list[str]:
    """Docstrings of modules, classes and functions in the source files of installed ``packages``.

    Args:
        packages: importable top-level names (``"json"``, ``"torch"``); files are parsed, never imported.

    Example:
        >>> any("JSON" in text for text in docstring_texts(["json"]))
        True
    """
    texts = []
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            raise ValueError(
                f"package {name!r} is not installed or has no Python source to read docstrings from; "
                "remove it from `packages` or install it."
            )
        origin = Path(spec.origin)
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        for file in files:
            if "test" in file.relative_to(origin.parent).parts[0].lower() and len(files) > 1:
                continue  # test suites are full of fixture strings, not documentation
            try:
                tree = ast.parse(file.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node, clean=True)
                    if doc:
                        texts.append(doc)
    return texts


def collect_sentences(
    packages: Iterable[str] = DEFAULT_PACKAGES, pydoc: bool = True, min_words: int = 5, max_words: int = 40
) -> list[str]:
    """Deduplicated sentences (first occurrence kept; case and spacing ignored) from the bundled sources.

    Args:
        packages: packages whose docstrings are read (see :func:`docstring_texts`).
        pydoc: include CPython's help topics.
        min_words: shortest sentence kept.
        max_words: longest sentence kept.

    Example:
        >>> sentences = collect_sentences(["json"], pydoc=False)
        >>> len(sentences) == len({s.lower() for s in sentences})
        True
    """
    texts = (pydoc_texts() if pydoc else []) + docstring_texts(packages)
    seen: set[str] = set()
    unique = []
    for text in texts:
        for sentence in split_sentences(text, min_words, max_words):
            key = sentence.lower()
            if key not in seen:
                seen.add(key)
                unique.append(sentence)
    return unique


def split_of(sentence: str, seed: int, val_fraction: float, heldout_fraction: float) -> str:
    """``"heldout"``, ``"val"`` or ``"train"`` from a seeded SHA-256 of the sentence (stable across corpora).

    Example:
        >>> split_of("A sentence.", seed=0, val_fraction=0.0, heldout_fraction=1.0)
        'heldout'
    """
    digest = hashlib.sha256(f"{seed}\x00{sentence.lower()}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < heldout_fraction:
        return "heldout"
    return "val" if u < heldout_fraction + val_fraction else "train"
