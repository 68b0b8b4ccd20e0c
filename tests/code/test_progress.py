"""Progress of long loops: a bar on a terminal, log lines every tenth (or every N seconds) elsewhere, silence
on request; and a real stage (the demo generator) reports through it."""

from __future__ import annotations

import io
import logging

import pytest

from srvau.progress import Progress, mode, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "srvau.progress"]


def test_mode_follows_the_terminal_unless_the_environment_chooses(monkeypatch):
    monkeypatch.delenv("SRVAU_PROGRESS", raising=False)
    assert mode(_Terminal()) == "bar" and mode(io.StringIO()) == "log"
    for value, expected in (("0", "off"), ("off", "off"), ("log", "log"), ("bar", "bar")):
        monkeypatch.setenv("SRVAU_PROGRESS", value)
        assert mode(_Terminal()) == expected and mode(io.StringIO()) == expected


def test_log_mode_writes_a_line_per_tenth_and_one_at_the_end(monkeypatch, caplog):
    monkeypatch.setenv("SRVAU_PROGRESS", "log")
    caplog.set_level(logging.INFO, logger="srvau.progress")
    items = list(progress(range(40), desc="ingest videos", unit="video"))
    assert items == list(range(40))  # the loop itself is untouched
    lines = _lines(caplog)
    assert len(lines) == 10  # 10%, 20%, ... 90%, then the closing line instead of 100%
    assert lines[0].startswith("ingest videos: 4/40 (10%), ") and "video/s" in lines[0]
    assert lines[4].startswith("ingest videos: 20/40 (50%)")
    assert lines[-1].startswith("ingest videos: 40 videos in ")


def test_log_mode_also_writes_after_every_s_seconds(monkeypatch, caplog):
    monkeypatch.setenv("SRVAU_PROGRESS", "log")
    caplog.set_level(logging.INFO, logger="srvau.progress")
    with Progress(total=1000, desc="judge", unit="answer", every_s=0.0) as p:
        for _ in range(3):
            p.update()  # far below a tenth, but the interval has passed
    assert [line.split(",")[0] for line in _lines(caplog)] == ["judge: 1/1000 (0%)", "judge: 2/1000 (0%)",
                                                              "judge: 3/1000 (0%)", "judge: 3 answers in 0.0 s"]


@pytest.mark.parametrize("how", ["env", "enabled"])
def test_silent_when_asked(monkeypatch, caplog, capsys, how):
    monkeypatch.setenv("SRVAU_PROGRESS", "0" if how == "env" else "log")
    caplog.set_level(logging.INFO, logger="srvau.progress")
    assert sum(progress(range(30), desc="x", enabled=how != "enabled")) == sum(range(30))
    assert _lines(caplog) == [] and capsys.readouterr().err == ""


def test_a_stage_reports_progress_without_a_terminal(monkeypatch, caplog, tmp_path, params):
    """The demo generator under a non-TTY (as under `dvc repro` in the flow) logs its progress."""
    from srvau.data.synth import synthesize

    monkeypatch.setenv("SRVAU_PROGRESS", "log")  # what a non-TTY gets (pytest -s on a terminal would get a bar)
    caplog.set_level(logging.INFO, logger="srvau.progress")
    cfg = params.synth.model_copy(update={"n_train": 6, "n_val": 2, "n_test": 2, "duration_s": 2.0})
    synthesize(tmp_path, cfg, params.seed)
    lines = _lines(caplog)
    assert lines and lines[-1].startswith("synth videos: 10 videos in ")
    assert any(line.startswith("synth videos: 5/10 (50%)") for line in lines)
