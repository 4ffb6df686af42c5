"""The JavaScript host's expected values (js/test/fixtures/python.json) are what the Python runtime
makes today: regenerated in memory by js/test/make_fixtures.py and compared with the committed file,
so the JS tests cannot pass against stale numbers."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_js_fixture_is_current():
    spec = importlib.util.spec_from_file_location("make_fixtures", ROOT / "js" / "test" / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (ROOT / "js" / "test" / "fixtures" / "python.json").read_text()
    assert module.dumps(module.fixtures()) == committed, (
        "js/test/fixtures/python.json is stale: run `.venv/bin/python js/test/make_fixtures.py` and commit it")
