"""The error dialects of the surfaces whose clients expect another error shape than OpenAI's.

The app installs them for its routes; the connection protocol uses them too, for the refusals it writes
before any route has seen the request (slow or oversized headers, a slow body, a full server).
"""

from __future__ import annotations

from openfusion.api.messages.errors import ERRORS as MESSAGES

ERROR_DIALECTS = (MESSAGES,)
