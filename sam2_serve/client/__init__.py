"""The Python client of a sam2-serve service (``Model``), its data types and errors, and the ``sam2-serve`` CLI.

Light on purpose: ``requests``, ``numpy``, ``pillow`` and ``websockets`` (PyAV only for ``sam2-serve track`` and
``live``); nothing here imports torch or Ray, so ``pip install sam2-serve`` is enough to call a service.
"""

from sam2_serve.client.errors import (AuthenticationError, ClientError, ConnectionFailed, RequestTimeout,
                                      Sam2ServeError, ServerBusy, ServerError, ServiceUnavailable, StreamError)
from sam2_serve.client.live import LiveFrame, LiveStream
from sam2_serve.client.model import FrameStream, Model, Regions, Session, __version__
from sam2_serve.client.types import Concept, Frame, Image, Region, Video

__all__ = ["Model", "Regions", "Session", "FrameStream", "LiveStream", "LiveFrame", "Image", "Video", "Region",
           "Concept", "Frame", "Sam2ServeError", "ClientError", "AuthenticationError", "ServerError",
           "ServiceUnavailable", "ServerBusy", "StreamError", "RequestTimeout", "ConnectionFailed", "__version__"]
