"""lit_distill/cli/app.py: what the CLI keeps out of a run's output."""

import logging

import pytest

from lit_distill.cli.app import NOISE, quiet_lightning


@pytest.mark.parametrize("name", sorted(NOISE))
def test_import_time_noise_is_dropped_and_the_loggers_other_lines_kept(name, caplog):
    quiet_lightning()
    quiet_lightning()  # a second CLI in the same process adds no second filter
    log = logging.getLogger(name)
    assert len(log.filters) == len({type(f) for f in log.filters})
    with caplog.at_level(logging.WARNING):
        log.warning("%s /site-packages/x.so: could not load this library", NOISE[name])
        log.warning("something the user must see")
    assert [r.getMessage() for r in caplog.records if r.name == name] == ["something the user must see"]
