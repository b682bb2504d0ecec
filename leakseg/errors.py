"""The one exception type for bad input, shared by the pipeline, the handler and `leakseg predict`."""

from __future__ import annotations

from typing import Optional

from leakseg.schema import ERROR_STATUS, ErrorCode, ErrorDetail, ErrorResponse


class InputError(ValueError):
    """A request the service cannot use. Carries the API error code and the offending field."""

    def __init__(self, code: ErrorCode, message: str, field: Optional[str] = None):
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.field = field

    @property
    def status(self) -> int:
        return ERROR_STATUS[self.code]

    def to_response(self, request_id: Optional[str] = None) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorDetail(code=self.code, message=self.message, field=self.field, request_id=request_id)
        )
