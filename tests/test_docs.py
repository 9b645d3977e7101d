"""docs/CONTRACT.md is what scripts/gen-docs writes from the code's own tables, and the
README sends readers there, inside the project."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from loginprobe.contract import METRICS, Reason
from tests.test_exports import CONTRACT

ROOT = Path(__file__).resolve().parent.parent


def _generator() -> object:
    loader = importlib.machinery.SourceFileLoader("gen_docs", str(ROOT / "scripts" / "gen-docs"))
    spec = importlib.util.spec_from_loader("gen_docs", loader)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_contract_document_is_what_the_code_says() -> None:
    rendered = _generator().render()  # type: ignore[attr-defined]
    committed = (ROOT / "docs" / "CONTRACT.md").read_text(encoding="utf-8")
    assert rendered == committed, "docs/CONTRACT.md is stale: run scripts/gen-docs"
    assert "{{" not in committed
    for reason in Reason:
        assert f"| `{reason}` | {reason.step} | {reason.meaning} | {reason.hint} |" in committed
    for metric in METRICS:
        assert f"| `{metric.name}` | {metric.kind} | {', '.join(metric.labels)} |" in committed


def test_the_readme_points_inside_the_project() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "../shared" not in readme
    assert "docs/CONTRACT.md" in readme


def test_the_metric_table_is_what_the_collector_exports() -> None:
    # tests/test_exports.py holds section 4 verbatim and checks a live /metrics against it.
    exported = {name: labels for name, (_, labels) in CONTRACT.items()}
    declared = {m.name.removesuffix("_total"): set(m.labels) for m in METRICS
                if m.section == 4}
    assert declared == exported
