"""A wasi:cli command component (componentize-py) that makes one outgoing HTTP request with
wasi:http/outgoing-handler: GET of the URL in its first argument (http only), then prints
the status and the body, and exits 1 if the request failed.
"""

import sys
from urllib.parse import urlsplit

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import outgoing_handler, streams
from wit_world.imports import wasi_http_types as types


class Run(exports.Run):
    def run(self) -> None:
        url = urlsplit(sys.argv[1])
        request = types.OutgoingRequest(types.Fields())
        request.set_scheme(types.Scheme_Http())
        request.set_authority(url.netloc)
        request.set_path_with_query(url.path or "/")
        future = outgoing_handler.handle(request, None)
        with future.subscribe() as ready:
            ready.block()
        outcome = future.get()
        future.__exit__(None, None, None)
        if outcome is None or isinstance(outcome, Err) or isinstance(outcome.value, Err):
            print(f"request failed: {outcome}")
            raise Err(None)
        response = outcome.value.value
        body = response.consume()
        data = b""
        with body.stream() as stream:  # a child of the body: dropped first
            while True:
                try:
                    data += stream.blocking_read(65536)
                except Err as e:
                    if isinstance(e.value, streams.StreamError_Closed):
                        break
                    raise
        types.IncomingBody.finish(body).__exit__(None, None, None)
        print(response.status(), data.decode())
        response.__exit__(None, None, None)
