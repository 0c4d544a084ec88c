"""Start the Sparsity Explorer web app: `python app.py [--host 127.0.0.1] [--port 7860] [--share] [--auth user:pass]`.

The history lives in the database given by --db, else $DSA_DATABASE_URL, else a SQLite file under
~/.local/share/sparsity-explorer/. When the app is reachable beyond this machine (--share, or a host other than
localhost), models and calibration text cannot be loaded from local paths.
"""

from __future__ import annotations

import argparse
import logging
import sys

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_UPLOAD = "10mb"  # above storage's 5 MiB import limit, so that file gets storage's own message


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("--auth takes user:pass")
    return user, password


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python app.py", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also serve through a public Gradio share link")
    p.add_argument("--auth", type=parse_auth, default=None, metavar="USER:PASS", help="require this login")
    p.add_argument("--db", default=None, help="SQLAlchemy URL of the history (default: $DSA_DATABASE_URL or "
                   "a SQLite file under ~/.local/share/sparsity-explorer/)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu; default: cuda when present")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def exposed(host: str, share: bool) -> bool:
    """Whether other machines can reach the app."""
    return share or host not in LOCAL_HOSTS


def create_app(db: str | None = None, device: str | None = None, allow_local_paths: bool = True):
    """The Gradio Blocks of the app over the given history database, not yet launched."""
    from storage import History, open_database
    from ui.layout import build_app
    from ui.workspace import Workspace

    return build_app(Workspace(device, allow_local_paths), History(open_database(db)))


def launch_options(args: argparse.Namespace) -> dict:
    import gradio as gr

    from ui.layout import CSS

    return {"server_name": args.host, "server_port": args.port, "share": args.share, "auth": args.auth,
            "max_file_size": MAX_UPLOAD, "theme": gr.themes.Soft(), "css": CSS}


def main(argv: list[str] | None = None) -> int:
    from dsa_core.errors import DSAError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        demo = create_app(args.db, args.device, allow_local_paths=not exposed(args.host, args.share))
    except DSAError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    demo.launch(**launch_options(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
