"""Python client and command line of sam2-serve (SAM 2.1 served with Ray Serve).

The data types follow the hosted SAM 2 model's SDK, so its examples run after changing the imports and the
``Model(...)`` line. Light: ``requests``, ``numpy`` and ``pillow`` (PyAV only for ``sam2-serve track``).
"""

from sam2_serve.client import FrameStream, Model, Regions, Session, __version__
from sam2_serve.errors import (AuthenticationError, ClientError, ConnectionFailed, RequestTimeout, Sam2ServeError,
                               ServerBusy, ServerError, ServiceUnavailable, StreamError)
from sam2_serve.types import Concept, Frame, Image, Region, Video

__all__ = ["Model", "Regions", "Session", "FrameStream", "Image", "Video", "Region", "Concept", "Frame",
           "Sam2ServeError", "ClientError", "AuthenticationError", "ServerError", "ServiceUnavailable", "ServerBusy",
           "StreamError", "RequestTimeout", "ConnectionFailed", "__version__"]
