"""Body limits before any view reads the body: 413 for oversized bodies, gzip decoding with a cap.

xDrip+ gzips its uploads (GUIDE.md §6). Decompression is bounded, so a small gzip
bomb cannot expand into gigabytes in memory.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

ERR_BODY_TOO_LARGE = "Request body is larger than the {limit} byte limit; split it into smaller batches."
ERR_BAD_GZIP = "Request body is not valid gzip data."
ERR_ENCODING = "Unsupported Content-Encoding {encoding!r}; send gzip or an unencoded body."


def _too_large() -> JsonResponse:
    return JsonResponse({"detail": ERR_BODY_TOO_LARGE.format(limit=settings.MAX_REQUEST_BODY_BYTES)}, status=413)


class RequestBodyLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit: int = settings.MAX_REQUEST_BODY_BYTES
        try:
            declared_length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared_length = 0
        if declared_length > limit:
            return _too_large()
        encoding = request.META.get("HTTP_CONTENT_ENCODING", "").strip().lower()
        if encoding and encoding != "identity":
            if encoding not in {"gzip", "x-gzip"}:
                return JsonResponse({"detail": ERR_ENCODING.format(encoding=encoding)}, status=415)
            decoder = zlib.decompressobj(wbits=31)
            try:
                body = decoder.decompress(request.read(limit + 1), limit + 1)
            except zlib.error:
                return JsonResponse({"detail": ERR_BAD_GZIP}, status=400)
            if len(body) > limit or decoder.unconsumed_tail:
                return _too_large()
            request._stream = io.BytesIO(body)  # type: ignore[attr-defined]
            request._read_started = False  # type: ignore[attr-defined]
            request.META["CONTENT_LENGTH"] = str(len(body))
            del request.META["HTTP_CONTENT_ENCODING"]
        return self.get_response(request)
