"""Ranks decode in step: generation with a model sharded by ``fsdp2`` on 2 CPU processes (gloo), where every decode
step is a collective, ends although the two ranks' rows finish at different steps and their prompts leave different
room; under ``ddp`` each rank decodes alone. What each rank ran: tests/generation/ranks_in_step.py."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(folder: Path, strategy: str, *kinds: str) -> dict[str, list[dict]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    script = ROOT / "tests" / "generation" / "ranks_in_step.py"
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script), str(folder), strategy, *kinds], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=120 * len(kinds),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.monotonic() - start < 60 * len(kinds)  # a minute per run at most, not a hang
    return {kind: [json.loads((folder / f"{kind}.rank{r}.json").read_text()) for r in (0, 1)] for kind in kinds}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> dict[str, list[dict]]:
    pytest.importorskip("transformers")
    return run(tmp_path_factory.mktemp("fsdp2"), "fsdp2", "gpt", "hf")


@pytest.mark.parametrize("kind", ["gpt", "hf"])
def test_sharded_ranks_decode_the_same_steps_and_match_one_process(sharded, kind):
    ranks = sharded[kind]
    assert all(r["sharded"] for r in ranks)
    assert ranks[0]["forwards"] == ranks[1]["forwards"]  # in step: rank 0 kept stepping after its row ended
    for r in ranks:
        assert r["out"] == r["reference"]  # the same tokens as the unsharded model, cut where it stops
    assert len(ranks[0]["out"][0]) == 3 + ranks[0]["eos_step"] + 1 < 3 + 12  # rank 0 stopped at its eos
    assert len(ranks[1]["out"][0]) == 12 + 12  # rank 1 ran on: 12 steps, the room its longer prompt leaves


def test_a_prompt_too_long_on_one_sharded_rank_fails_on_every_rank(sharded):
    gpt = sharded["gpt"]
    assert gpt[0]["overflow"] == gpt[1]["overflow"] and "block_size=24" in gpt[0]["overflow"]


def test_replicated_ranks_decode_alone(tmp_path):
    ranks = run(tmp_path, "ddp", "gpt")["gpt"]
    assert not any(r["sharded"] for r in ranks)
    assert ranks[0]["forwards"] < ranks[1]["forwards"]  # no collective per step: rank 0 stops at its eos
    assert all(r["out"] == r["reference"] for r in ranks)
    assert ranks[0]["overflow"] is None and "block_size=24" in ranks[1]["overflow"]
