"""A pytest plugin that writes each collected test's fixtures and markers as JSON to the file
``$PYRAMIDREPRO_MARKER_REPORT`` (``pytest --collect-only -p support.marker_report``)."""

from __future__ import annotations

import json
import os

import pytest


def pytest_collection_finish(session: pytest.Session) -> None:
    items = [{"id": item.nodeid, "fixtures": sorted(getattr(item, "fixturenames", ())),
              "markers": sorted({m.name for m in item.iter_markers()})} for item in session.items]
    with open(os.environ["PYRAMIDREPRO_MARKER_REPORT"], "w") as f:
        json.dump(items, f)
