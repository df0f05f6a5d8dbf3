"""The client of a running gateway's admin API, for ``laneway lanes``, ``refresh``, ``backends
status`` and ``cache``.

Synchronous and stdlib-only (``urllib``): a CLI makes one request at a time and should not pay
for an event loop. Every failure becomes one line on stderr with exit status 1, never a
traceback, and the two kinds are kept apart (as in the gateway's own error tree):

    AdminError (click.ClickException)
     ├── GatewayUnreachable   no usable HTTP answer: refused, reset, not HTTP, timed out
     └── GatewayRefused       the gateway answered with an error status (OpenAI-shaped body)

urllib's exceptions are translated in exactly one place, ``AdminClient.request``.
"""

from __future__ import annotations

import functools
import http.client
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click
import orjson

from laneway.cli.common import config_option, settings_or_exit

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0
_HINT_URL = "is `laneway serve` running? (pass --url or set LANEWAY_URL)"
_HINT_KEY = "pass an admin key with --key or LANEWAY_ADMIN_KEY"
_ANY_ADDRESS = frozenset({"", "0.0.0.0", "::", "[::]"})


class AdminError(click.ClickException):
    """A request to the admin API failed; click shows it as ``Error: ...`` with exit status 1."""


class GatewayUnreachable(AdminError):
    """No usable answer: the gateway may be restarting, so ``lanes --watch`` keeps trying."""


class GatewayRefused(AdminError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class AdminClient:
    def __init__(self, base_url: str, key: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base_url = normalize_url(base_url)
        self.key = key
        self.timeout = timeout

    def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return self.request("GET", path, params)

    def post(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return self.request("POST", path, params)

    def delete(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return self.request("DELETE", path, params)

    def request(self, method: str, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Send one request and return the JSON object it answered; raise an ``AdminError``."""
        url = self.base_url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        headers = {"accept": "application/json", "user-agent": "laneway-cli"}
        if self.key:
            headers["authorization"] = f"Bearer {self.key}"
        try:
            req = urllib.request.Request(url, method=method, headers=headers)
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw: bytes = resp.read()
        except urllib.error.HTTPError as exc:  # before URLError: it is one
            raise _refused(exc.code, exc.reason, _drain(exc)) from None
        except UnicodeError:  # http.client sends headers as latin-1
            raise AdminError("the admin key holds characters an HTTP header cannot carry") from None
        except (ValueError, http.client.InvalidURL) as exc:  # urllib's word for a URL it cannot use
            raise AdminError(f"invalid gateway URL {self.base_url!r}: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:  # URLError and TimeoutError are OSErrors
            raise self._unreachable(exc, path) from None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            raise GatewayUnreachable(
                f"{self.base_url} answered {method} {path} with something that is not the admin API's "
                f"JSON; {_HINT_URL}"
            )
        return body

    def _unreachable(self, exc: BaseException, path: str) -> GatewayUnreachable:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError):
            why = "a refresh waits for the slowest backend; " if path == "/admin/refresh" else ""
            return GatewayUnreachable(
                f"the gateway at {self.base_url} did not answer within {self.timeout:g}s "
                f"({why}pass --timeout to wait longer)"
            )
        detail = str(reason) or type(reason).__name__
        return GatewayUnreachable(f"cannot reach the gateway at {self.base_url}: {detail}; {_HINT_URL}")


def _drain(exc: urllib.error.HTTPError) -> bytes:
    """The error's body, or nothing if it cannot be read (a timeout while reading it)."""
    try:
        return exc.read()
    except (OSError, http.client.HTTPException):
        return b""
    finally:
        exc.close()


def _refused(status: int, reason: str, raw: bytes) -> GatewayRefused:
    """The gateway's own words from its OpenAI-shaped error body, with the status."""
    message = None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = body["error"].get("message")
    text = str(message).rstrip(".") if message else f"the gateway answered {reason or 'an error'}"
    if status in (401, 403):
        return GatewayRefused(f"{text} (HTTP {status}); {_HINT_KEY}", status)
    return GatewayRefused(f"{text} (HTTP {status})", status)


def normalize_url(url: str) -> str:
    """``host:8080`` -> ``http://host:8080``; no trailing slash, so paths append cleanly."""
    url = url.strip().rstrip("/")
    return url if "://" in url else "http://" + url


def url_from_config(host: str, port: int) -> str:
    """Where a gateway started with this config listens: an any-address bind is reached on
    loopback, and an IPv6 literal needs brackets."""
    if host in _ANY_ADDRESS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


url_option = click.option(
    "--url",
    envvar="LANEWAY_URL",
    metavar="URL",
    help="The gateway (default: $LANEWAY_URL, else the config's server.host and server.port).",
)
key_option = click.option(
    "--key",
    "admin_key",
    envvar="LANEWAY_ADMIN_KEY",
    metavar="KEY",
    help="An admin key (admin: true under auth.keys); default: $LANEWAY_ADMIN_KEY.",
)
timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the gateway's answer.",
)
_OPTIONS = (url_option, key_option, timeout_option, config_option)


def admin_options(func: Callable[..., T]) -> Callable[..., T]:
    """Add ``--url``, ``--key``, ``--timeout`` and ``--config`` to a command and hand it a ready
    ``client: AdminClient`` instead. Put it closest to the function, so the command's own options
    come first in ``--help``. The config is read only when no URL is given."""

    @functools.wraps(func)
    def wrapper(
        *args: Any,
        url: str | None,
        admin_key: str | None,
        timeout: float,
        config_path: str | None,
        **kwargs: Any,
    ) -> T:
        if not url:
            server = settings_or_exit(config_path).server
            url = url_from_config(server.host, server.port)
        return func(*args, client=AdminClient(url, admin_key, timeout=timeout), **kwargs)

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def print_json(body: Any) -> None:
    click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())


def redraw(
    fetch: Callable[[], dict[str, Any]],
    pause: Callable[[], bool],
    *,
    key: str,
    draw: Callable[[dict[str, Any], dict[str, Any] | None, float], None],
    header: str,
    count: int | None,
    as_json: bool,
) -> None:
    """Draw, pause, draw again (``laneway lanes --watch``, ``pools --watch``). ``key`` names the
    list in the answer; ``draw(body, previous body, now)`` prints one. A gateway that goes away
    after the first draw (a restart) is reported and retried; at the first draw it is an error,
    as without --watch."""
    previous: dict[str, Any] | None = None
    clear = sys.stdout.isatty() and not as_json
    draws = 0
    while True:
        now = time.time()
        try:
            body = fetch()
        except GatewayUnreachable as exc:
            if previous is None:
                raise
            body = {"error": exc.message}
        if as_json:
            click.echo(orjson.dumps({"at": now, **body}).decode())
        else:
            if clear:
                click.clear()
            elif draws:
                click.echo()
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
            shown = f"{len(body[key])} {key}" if key in body else "unreachable"
            click.echo(f"{stamp}  {header}  ({shown}; Ctrl-C to stop)")
            if key in body:
                draw(body, previous, now)
            else:
                click.echo(f"! {body['error']}")
        if key in body:
            previous = body
        draws += 1
        if (count is not None and draws >= count) or not pause():
            return
