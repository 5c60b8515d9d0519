"""Example backend: a tiny orders service.

Run: uv run --frozen uvicorn examples.service1:app --host 127.0.0.1 --port 8001
"""

from collections.abc import Awaitable, Callable
from itertools import count
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, Field

app = FastAPI(title="service1 (orders)")


class OrderIn(BaseModel):
    item: str
    quantity: int = Field(ge=1)


class Order(OrderIn):
    id: int


_ids = count(1)
ORDERS: dict[int, Order] = {}
for _item, _qty in [("widget", 2), ("gadget", 1)]:
    _order = Order(id=next(_ids), item=_item, quantity=_qty)
    ORDERS[_order.id] = _order


@app.middleware("http")
async def add_service_header(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    response = await call_next(request)
    response.headers["X-Service"] = "service1"
    return response


@app.get("/api/orders")
async def list_orders() -> list[Order]:
    return list(ORDERS.values())


@app.post("/api/orders", status_code=201)
async def create_order(order: OrderIn) -> Order:
    created = Order(id=next(_ids), **order.model_dump())
    ORDERS[created.id] = created
    return created


@app.get("/api/orders/{order_id}")
async def get_order(order_id: int) -> Order:
    if order_id not in ORDERS:
        raise HTTPException(status_code=404, detail="Order not found")
    return ORDERS[order_id]


@app.api_route("/api/echo", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def echo(request: Request) -> dict[str, Any]:
    """Show exactly what reached this backend (e.g. X-Forwarded-For, X-Request-ID)."""
    body = await request.body()
    return {
        "method": request.method,
        "path": request.url.path,
        "query": request.url.query,
        "headers": dict(request.headers),
        "client": request.client.host if request.client else None,
        "body": body.decode("utf-8", "replace"),
    }
