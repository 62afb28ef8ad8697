"""One error shape for every failure, like vLLM: {"error": {message, type, param, code}}."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

_TYPES = {
    401: "AuthenticationError",
    400: "BadRequestError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class ApiError(Exception):
    """An error answered to the client; the HTTP status doubles as `code`, as in vLLM."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        param: str | None = None,
        retry_after: int | None = None,
        close: bool = False,
        err_type: str | None = None,
        raw_body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.retry_after = retry_after
        self.close = close
        self.err_type = err_type  # overrides the type derived from the status
        self.raw_body = raw_body  # a body not in the error shape (vLLM's framework errors)

    @property
    def type(self) -> str:
        if self.err_type is not None:
            return self.err_type
        return _TYPES.get(
            self.status, "BadRequestError" if self.status < 500 else "InternalServerError"
        )

    def body(self) -> dict[str, Any]:
        if self.raw_body is not None:
            return self.raw_body
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.status,
            }
        }

    def response(self) -> web.Response:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        resp = web.Response(
            status=self.status,
            text=json.dumps(self.body()),
            content_type="application/json",
            headers=headers,
        )
        if self.close:
            # Do not drain the rest of an oversized upload: close the connection instead.
            resp.force_close()
        return resp


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(message, 400, param)


def not_found_model(name: str) -> ApiError:
    return ApiError(f"The model `{name}` does not exist.", 404, "model")


def busy(retry_after: int = 1) -> ApiError:
    return ApiError(
        "The server is busy: too many requests queued, retry later.", 503, None, retry_after
    )
