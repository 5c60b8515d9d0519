"""The Prometheus text parser the metrics tests rely on (tests/integration/test_observability.py)
can fail: it is checked here without a gateway."""

from __future__ import annotations

import pytest

from tests.integration.test_observability import parse_prometheus


def test_prometheus_parser_rejects_malformed_text():
    """The parser the metrics test relies on can fail: bad labels, no TYPE, split families, no newline."""
    good = '# HELP a_total x\n# TYPE a_total counter\na_total{k="v",worker="0"} 1\n'
    assert parse_prometheus(good).one("a_total", k="v") == 1
    for bad in (
        good.rstrip("\n"),
        'a_total{k="v"} 1\n',
        '# TYPE a_total counter\na_total{k=v} 1\n',
        '# TYPE a_total counter\na_total{k="v"} one\n',
        '# TYPE a_total counter\na_total{k="v"} 1\na_total{k="v"} 2\n',
        '# TYPE a counter\n# TYPE b gauge\na 1\nb 1\na{x="1"} 1\n',
        '# TYPE a_total counter\na_total 1\n# TYPE a_total counter\n',
    ):
        with pytest.raises(AssertionError):
            parse_prometheus(bad)
