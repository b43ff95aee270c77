"""Try the cloud providers without AWS: moto's server (an AWS emulator) on loopback behind the tests' proxy,
which papers over where moto differs from AWS for libcloud (test scaffolding, see conftest.py's docstring:
EC2 and Route 53 XML namespaces, Route 53 routing and API version, moto's change journal). Never for
production: nothing here is AWS.

    python -m tests.reconcilers.infra.cloud.moto_front --port 5000

then point `[infra.providers.aws]` at `host = "127.0.0.1"`, `port = 5000`, `secure = false` (any key and
secret: moto checks none). Stops on Ctrl-C (or SIGTERM), stopping moto with it.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.reconcilers.infra.cloud.conftest import FaultProxy
from tests.servers import free_port


def main() -> None:
    """Start moto and the proxy; serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=5000, help="the loopback port Stratum talks to")
    args = parser.parse_args()
    upstream = free_port()
    moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p",
                             str(upstream)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = FaultProxy(upstream, fix_namespaces=True, port=args.port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"moto (AWS emulator) at http://127.0.0.1:{proxy.port}: host = \"127.0.0.1\", port = {proxy.port}, "
          "secure = false", flush=True)
    try:
        while not stop.wait(1.0):
            if moto.poll() is not None:
                sys.exit("moto_server stopped")
    except KeyboardInterrupt:
        pass
    finally:
        proxy.close()
        moto.terminate()
        moto.wait(10)


if __name__ == "__main__":
    main()
