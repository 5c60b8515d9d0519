"""Example backend: a tiny notifications service.

Run: uv run --frozen uvicorn examples.service2:app --host 127.0.0.1 --port 8002
"""

import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import uuid4

from fastapi import FastAPI, File, Form, Request, Response, UploadFile
from pydantic import BaseModel

app = FastAPI(title="service2 (notifications)")


class NotificationIn(BaseModel):
    to: str
    message: str


class Notification(NotificationIn):
    id: str
    status: str
    created_at: datetime


NOTIFICATIONS: list[Notification] = []


@app.middleware("http")
async def add_service_header(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    response = await call_next(request)
    response.headers["X-Service"] = "service2"
    return response


@app.post("/api/notifications/send", status_code=202)
async def send_notification(notification: NotificationIn) -> dict[str, Any]:
    sent = Notification(
        id=uuid4().hex,
        status="queued",
        created_at=datetime.now(UTC),
        **notification.model_dump(),
    )
    NOTIFICATIONS.append(sent)
    return {"status": sent.status, "id": sent.id}


@app.get("/api/notifications")
async def list_notifications() -> list[Notification]:
    return NOTIFICATIONS


@app.post("/api/notifications/attachments", status_code=201)
async def upload_attachment(to: Annotated[str, Form()], file: Annotated[UploadFile, File()]) -> dict[str, Any]:
    """A form with a file (multipart/form-data): what a browser's upload form sends."""
    data = await file.read()
    return {
        "to": to,
        "filename": file.filename,
        "content_type": file.content_type,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
