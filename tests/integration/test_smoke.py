from tests.backends import backend
from tests.integration.helpers import get_json


def test_get_is_forwarded_with_prefix_replaced(gateway_factory):
    """/api/service1/orders?x=1 reaches service1 as /api/orders?x=1."""
    with backend() as be:
        gw = gateway_factory(SERVICE1_URL=be.url)
        status, doc = get_json(gw.port, "/api/service1/orders?x=1")
        assert status == 200
        assert doc["target"] == "/api/orders?x=1"
