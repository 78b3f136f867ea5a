"""The HTTP API of the ingress: the FastAPI app built per replica (``routes.build_http_app``), request bodies
(``bodies``), the per-route guard and the one mapping of errors to HTTP statuses (``guard``), the OpenAPI document
(``openapi``) and the browser page (``web``)."""
