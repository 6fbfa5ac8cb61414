"""cellsparse web app: entry point for ``make run``, Docker and Hugging Face Spaces.

    python app.py --host 127.0.0.1 --port 7860
"""

from __future__ import annotations

import argparse
import logging
import os

from cellsparse_app.ui import build_demo, launch_options

__all__ = ["build_demo", "main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the cellsparse web app.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="interface to listen on (0.0.0.0 in containers)")
    parser.add_argument("--port", type=int,
                        default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    build_demo().launch(server_name=args.host, server_port=args.port, **launch_options())


if __name__ == "__main__":
    main()
