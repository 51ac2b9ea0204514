"""The run record's one source, ``config/schema.py``: every name in ``metrics.h5`` is declared there once
with what it holds and a line of documentation; the writer refuses other names, the reader's record
reads each as its kind, and docs/architecture.md's table is rendered from it."""

from __future__ import annotations

import pytest

from pyramidrepro.config.load import load_config
from pyramidrepro.config.schema import (
    EXIT_CODES,
    FINISHED,
    FLAG,
    FLOAT,
    INT,
    JSON_LIST,
    JSON_OBJECT,
    KINDS,
    LAYOUT_BEGIN,
    LAYOUT_END,
    TEXT,
    Attr,
    Status,
    Summary,
    layout_table,
)
from pyramidrepro.records.metrics import MetricsWriter, read_metrics
from pyramidrepro.records.runs import is_done, load_run, prepare, run_dir_for, status_of
from support import ROOT, SMOKE

#: a value of each kind, as a writer passes it
SAMPLE = {TEXT: "some text", INT: 7, FLOAT: 2.5, FLAG: True, JSON_OBJECT: {"a": 1}, JSON_LIST: [{"b": 2}]}
CONFIG = "name: schema\ntrain: {batch_size: 16}\nmodel: {}\ndata: {}\n"


def test_every_name_is_declared_once_with_its_kind_and_line_and_the_documented_table_is_rendered_from_them():
    names = [*Attr, *Summary]
    assert len({n.value for n in names}) == len(names)  # one name, one meaning
    assert all(n.kind in KINDS and n.doc for n in names), [n for n in names if n.kind not in KINDS or not n.doc]
    doc = (ROOT / "docs" / "architecture.md").read_text()
    shown = doc.split(LAYOUT_BEGIN + "\n", 1)[1].split("\n" + LAYOUT_END, 1)[0]
    assert shown == layout_table(), "docs/architecture.md's layout is stale: python -m pyramidrepro.config.schema"
    for n in names:
        assert f"| `{n}` | {n.kind} |" in shown


def test_every_schema_name_written_reads_back_as_its_kind_in_the_record(tmp_path):
    """What the writer takes, the reader's record holds, typed, for every name of the schema; no
    reader code names them one by one."""
    attrs = {a.value: SAMPLE[a.kind] for a in Attr if a not in (Attr.STATUS, Attr.CONFIG_YAML)}
    summary = {s.value: SAMPLE[s.kind] for s in Summary}
    w = MetricsWriter(tmp_path / "metrics.h5", flush_interval_s=100, attrs={Attr.CONFIG_YAML: CONFIG})
    w.set_attrs(**attrs)
    w.set_summary(**summary)
    w.close(Status.COMPLETED)
    recorded = load_run(tmp_path / "metrics.h5").recorded
    finished = {Attr.STATUS.value, Attr.CONFIG_YAML.value, Attr.FINISHED_AT.value}
    assert {k: v for k, v in recorded.items() if k not in finished} == {
        k: v for k, v in {**attrs, **summary}.items() if k != Attr.FINISHED_AT}
    assert recorded[Attr.STATUS] == "completed" and isinstance(recorded[Attr.WORLD_SIZE], int)


def test_a_name_outside_the_schema_is_refused_by_the_writer_and_a_wrong_kind_by_the_reader(tmp_path):
    w = MetricsWriter(tmp_path / "metrics.h5", flush_interval_s=100, attrs={Attr.CONFIG_YAML: CONFIG})
    with pytest.raises(KeyError, match="'gpu_count' is not a Attr name"):
        w.set_attrs(gpu_count=2)
    w.set_attrs(**{Attr.WORLD_SIZE: "two"})
    w.close(Status.COMPLETED)
    with pytest.raises(ValueError, match="its world_size attribute is not a (whole )?number"):
        load_run(tmp_path / "metrics.h5")


def test_the_status_vocabulary_decides_done_and_exit_codes(tmp_path):
    """nan and oom are results (done; their own non-zero exit codes); failed, interrupted and running are not."""
    assert FINISHED == {Status.COMPLETED, Status.OOM, Status.NAN}
    for status in Status:
        folder = run_dir_for(tmp_path, "exp", status.value)
        prepare(folder, load_config(SMOKE))
        writer = MetricsWriter(folder / "metrics.h5", flush_interval_s=0)
        if status != Status.RUNNING:
            writer.close(status)
        assert status_of(folder) == status
        assert is_done(folder) == (status in FINISHED)
    assert EXIT_CODES == {"completed": 0, "failed": 1, "oom": 3, "nan": 4, "interrupted": 143}
    assert not is_done(tmp_path / "exp" / "never-started")


def test_writer_refuses_a_name_the_schema_does_not_define(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.h5")
    with pytest.raises(KeyError, match="schema"):
        writer.set_attrs(batchsize=64)
    with pytest.raises(KeyError, match="schema"):
        writer.set_summary(imgs_per_s=1.0)
    writer.set_attrs(batch_size=64)
    writer.close("completed")
    assert read_metrics(tmp_path / "metrics.h5")["attrs"]["batch_size"] == 64
