"""A start-up the app refuses (an activity store that cannot be opened, say) told in one line, not a traceback."""

from __future__ import annotations

import sys
from typing import Any

from openfusion.errors import OpenFusionError

Message = dict[str, Any]


class StartupFailure:
    """ASGI wrapper: the `lifespan.startup.failed` of an OpenFusionError carries its message alone.

    Starlette sends the whole traceback as the message, and uvicorn logs it at ERROR: an operator reading "Traceback"
    looks for a bug, where the last line says what to fix. Any other exception keeps its traceback.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def relay(message: Message) -> None:
            # Starlette sends it while it handles the exception: the one being handled is the cause.
            cause = sys.exc_info()[1]
            if message["type"] == "lifespan.startup.failed" and isinstance(cause, OpenFusionError):
                message = {**message, "message": f"cannot start: {cause.log_message}"}
            await send(message)

        await self.app(scope, receive, relay)
