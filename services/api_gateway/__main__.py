"""``python -m services.api_gateway``: serve the HTTP API on TM_HTTP_HOST:TM_HTTP_PORT."""

from services.api_gateway.server import main

main()
