"""Start the Sparsity Explorer web app: `python app.py [--host 127.0.0.1] [--port 7860] [--share] [--auth user:pass]`.

The history lives in the database given by --db, else $DSA_DATABASE_URL, else a SQLite file under
~/.local/share/sparsity-explorer/. When the app is reachable beyond this machine (--share, or a host other than
localhost), it needs --auth, refuses logins for a while after repeated failures, and models and calibration text
cannot be loaded from local paths.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import sys
import threading
import time

from ui.limits import Limits

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_UPLOAD = "10mb"  # above storage's 5 MiB import limit, so that file gets storage's own message
MAX_FAILED_LOGINS = 5  # within FAILED_LOGIN_WINDOW_S; then every login is refused for that long
FAILED_LOGIN_WINDOW_S = 60.0


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("--auth takes user:pass")
    return user, password


class LoginGuard:
    """Gradio's auth callable for one user:pass that slows guessing down: after MAX_FAILED_LOGINS failures within
    the window, every attempt (the right password too) is refused until the window has passed. Gradio gives the
    callable no client address, so the limit is global: a guesser locks everyone out for a minute, not in."""

    def __init__(self, user: str, password: str, clock=time.monotonic):
        self._user, self._password, self._clock = user, password, clock
        self._failures: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, user: str, password: str) -> bool:
        with self._lock:
            now = self._clock()
            self._failures = [t for t in self._failures if now - t < FAILED_LOGIN_WINDOW_S]
            if len(self._failures) >= MAX_FAILED_LOGINS:
                return False
            ok = hmac.compare_digest(user.encode(), self._user.encode()) & hmac.compare_digest(
                password.encode(), self._password.encode())
            if not ok:
                self._failures.append(now)
            return bool(ok)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python app.py", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also serve through a public Gradio share link")
    p.add_argument("--auth", type=parse_auth, default=None, metavar="USER:PASS", help="require this login")
    p.add_argument("--db", default=None, help="SQLAlchemy URL of the history (default: $DSA_DATABASE_URL or "
                   "a SQLite file under ~/.local/share/sparsity-explorer/)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu; default: cuda when present")
    p.add_argument("--allow-models", default=None, metavar="M1,M2", help="when reachable from other machines, the "
                   "models visitors may load (default: " + ",".join(Limits().models) + ")")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def exposed(host: str, share: bool) -> bool:
    """Whether other machines can reach the app."""
    return share or host not in LOCAL_HOSTS


def create_app(db: str | None = None, device: str | None = None, limits: Limits | None = None):
    """The Gradio Blocks of the app over the given history database, not yet launched; `limits` for an app that
    other machines reach."""
    from storage import History, open_database
    from ui.app import build_app
    from ui.workspace import Workspace

    return build_app(Workspace(device, limits), History(open_database(db)))


def limits_of(args: argparse.Namespace) -> Limits | None:
    if not exposed(args.host, args.share):
        return None
    if args.allow_models is None:
        return Limits()
    return Limits(models=tuple(m.strip() for m in args.allow_models.split(",") if m.strip()))


def launch_options(args: argparse.Namespace) -> dict:
    import gradio as gr

    from ui.app import CSS

    return {"server_name": args.host, "server_port": args.port, "share": args.share,
            "auth": LoginGuard(*args.auth) if args.auth else None,
            "max_file_size": MAX_UPLOAD, "theme": gr.themes.Soft(), "css": CSS}


def main(argv: list[str] | None = None) -> int:
    from dsa_core.errors import DSAError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if exposed(args.host, args.share) and args.auth is None:
        print(f"error: the app would be reachable beyond this machine ({'--share' if args.share else args.host}); "
              "give it a login with --auth USER:PASS.", file=sys.stderr)
        return 2
    try:
        demo = create_app(args.db, args.device, limits_of(args))
    except DSAError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    demo.launch(**launch_options(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
