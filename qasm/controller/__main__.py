"""Runs the middlebox controller as its own process.

python -m qasm.controller --config FILE.json --decision-log FILE --listen 127.0.0.1:6653
"""

from __future__ import annotations

import argparse
import sys

from qasm.controller.pipeline import ConfigError, MiddleboxConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--decision-log", required=True)
    parser.add_argument("--listen", default="127.0.0.1:6653", help="OpenFlow HOST:PORT")
    args = parser.parse_args()
    try:
        with open(args.config, encoding="utf-8") as stream:
            MiddleboxConfig.from_json(stream.read())
    except (OSError, ConfigError) as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 2
    host, _, port = args.listen.rpartition(":")

    # Imported here: os-ken registers its options on import and CONF is parsed once.
    from os_ken import cfg
    from os_ken.base.app_manager import AppManager

    import qasm.controller.app  # noqa: F401  (registers the qasm-* options)

    cfg.CONF(
        args=[
            "--ofp-listen-host",
            host,
            "--ofp-tcp-listen-port",
            port,
            "--qasm-config",
            args.config,
            "--qasm-decision-log",
            args.decision_log,
        ],
        project="qasm",
    )
    AppManager.run_apps(["qasm.controller.app"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
