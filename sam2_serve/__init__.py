"""sam2-serve: SAM 2.1 (Segment Anything 2.1) served with Ray Serve.

``import sam2_serve`` is the light Python client (``sam2_serve.client``: requests, numpy, pillow, websockets). The
server (``sam2_serve.deployments``, ``sam2_serve.models``, ...) needs the ``server`` extra:
``pip install sam2-serve[server]``.

The data types follow the hosted SAM 2 model's SDK, so its examples run after changing the imports and the
``Model(...)`` line.
"""

from sam2_serve.client import (AuthenticationError, ClientError, Concept, ConnectionFailed, Frame, FrameStream, Image,
                               LiveFrame, LiveStream, Model, Regions, RequestTimeout, Region, Sam2ServeError,
                               ServerBusy, ServerError, ServiceUnavailable, Session, StreamError, Video, __version__)

__all__ = ["Model", "Regions", "Session", "FrameStream", "LiveStream", "LiveFrame", "Image", "Video", "Region",
           "Concept", "Frame", "Sam2ServeError", "ClientError", "AuthenticationError", "ServerError",
           "ServiceUnavailable", "ServerBusy", "StreamError", "RequestTimeout", "ConnectionFailed", "__version__"]
