"""localstripe on 127.0.0.1:PORT, with its pickle persistence turned off so tests never share
state through /tmp/localstripe.pickle. Prints "ready" once it listens."""
import sys

import localstripe.resources as resources

resources.Store.dump_to_disk = lambda self: None
resources.Store.try_load_from_disk = lambda self: None

from aiohttp import web  # noqa: E402
from localstripe.server import app  # noqa: E402


async def announce(_app):
    print("ready", flush=True)


app.on_startup.append(announce)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
