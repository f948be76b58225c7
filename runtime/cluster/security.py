"""The embedded Ray, locked down: loopback only, token authentication on, a Ray that does both.

Ray binds its GCS, raylet, object manager, workers, agents and Prometheus endpoints to
every interface unless the node's IP is a loopback address; then each binds to loopback.
``ray.init(_node_ip_address="127.0.0.1")`` alone is not enough: ``ray.init`` rewrites a
loopback address to the machine's routable one ("make sure localhost isn't resolved to
the loopback ip"), except where Ray runs single-machine only (macOS, Windows), which
:func:`loopback_node` makes it do for the one call.

Each embedded Ray gets a token of its own (256 random bits) in a file only its user can
read, ``~/.ray/edgecore/session-<pid>-<id>.token``; once its GCS is up, a link named by
the GCS address (``127.0.0.1_<port>.token``) lets ``edgecore status --address ...`` and
the other attaching commands find it (:func:`token_for`). Ray's own default token file
(``~/.ray/auth_token``) is shared by every Ray cluster of the user and is written with
the process umask (often readable by every local user), so it is not used for these.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from runtime.errors import ConfigError

# Token authentication exists from Ray 2.52 (and is on by default for local clusters from
# 2.59); every service of a node binding to loopback when its node IP is loopback, agents
# and metrics endpoints included, is what tests/test_security.py proves on 2.60, the
# oldest Ray this was verified with.
RAY_MIN_VERSION = (2, 60)
LOOPBACK = "127.0.0.1"


def check_ray_version(version: str | None = None) -> None:
    """Refuse a Ray older than :data:`RAY_MIN_VERSION` (the running one by default).

    >>> check_ray_version("2.60.0"); check_ray_version("3.0.0.dev0")
    >>> check_ray_version("2.52.1")
    Traceback (most recent call last):
    ...
    runtime.errors.ConfigError: Ray 2.52.1 is too old: edgecore needs Ray >= 2.60 (its embedded Ray listens on loopback only and requires a token from that version); upgrade with `pip install -U 'ray[default]>=2.60'`
    """
    if version is None:
        import ray

        version = ray.__version__
    numbers: list[int] = []
    for part in version.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        numbers.append(int(digits) if digits else 0)
    if tuple(numbers) < RAY_MIN_VERSION:
        need = ".".join(map(str, RAY_MIN_VERSION))
        raise ConfigError(
            f"Ray {version} is too old: edgecore needs Ray >= {need} (its embedded Ray listens "
            f"on loopback only and requires a token from that version); upgrade with "
            f"`pip install -U 'ray[default]>={need}'`"
        )


def is_loopback(host: str) -> bool:
    """``host`` is this machine's loopback (``::ffff:127.0.0.1`` as well).

    >>> [is_loopback(h) for h in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "localhost", "0.0.0.0", "::")]
    [True, True, True, True, False, False]
    """
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


@contextlib.contextmanager
def loopback_node() -> Iterator[None]:
    """Within: ``ray.init`` keeps a loopback node IP or GCS address as given, as it does on
    macOS and Windows, instead of replacing it with the machine's routable address."""
    import ray._private.ray_constants as constants

    saved = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved


def token_dir() -> Path:
    """Where session tokens live: ``~/.ray/edgecore``, readable by its owner only."""
    folder = Path.home() / ".ray" / "edgecore"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask; the folder may be old
    except OSError as err:
        raise ConfigError(
            f"cannot keep Ray's session token in {folder} ({err.strerror or err}): run as a "
            "user with a writable home folder, or set HOME to one"
        ) from None
    return folder


def new_session_token() -> Path:
    """Make the token of an embedded Ray about to start and turn token mode on for it.

    Ray's processes inherit the environment, so ``RAY_AUTH_MODE=token`` and
    ``RAY_AUTH_TOKEN_PATH`` reach the GCS, raylet, agents and workers. A token already
    chosen in ``RAY_AUTH_TOKEN`` (which Ray prefers to any file) is kept, so that the file
    says what is in force.
    """
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        raise ConfigError(
            f"RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']}: edgecore's embedded Ray always "
            "requires a token (anyone who reaches it could run code as you); unset RAY_AUTH_MODE"
        )
    folder = token_dir()
    _prune(folder)
    token = os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32)
    path = folder / f"session-{os.getpid()}-{secrets.token_hex(4)}.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    atexit.register(_remove, path)
    os.environ["RAY_AUTH_MODE"] = "token"  # explicit: not left to the default of a Ray version
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    _refresh_token_mode()
    return path


def publish_session_token(path: Path, gcs_address: str) -> Path:
    """Name ``path`` by the GCS address it guards, for the commands that attach to it."""
    link = token_dir() / _address_name(gcs_address)
    with contextlib.suppress(FileNotFoundError):
        link.unlink()  # a dead session's, on a port used again
    link.symlink_to(path.name)
    atexit.register(_remove, link)
    return link


def token_for(address: str) -> Path | None:
    """The token file of the embedded Ray whose GCS is at ``address``, if this user has one."""
    link = Path.home() / ".ray" / "edgecore" / _address_name(address)
    return link if link.is_file() else None  # is_file follows the link: None if it dangles


def use_token(path: Path) -> None:
    """Send the token in ``path`` from this process (and what it starts) on."""
    os.environ.pop("RAY_AUTH_TOKEN", None)  # Ray would prefer it to the file
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    _refresh_token_mode()


def refuses_our_token(address: str, timeout: float = 5.0) -> bool:
    """The GCS at ``address`` answers, and refuses the token this process would send (or
    its absence). Ray itself would retry such a refusal silently until it gives up."""
    import grpc
    from ray._raylet import AuthenticationTokenLoader
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    header = AuthenticationTokenLoader.instance().get_token_for_http_header()
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(),
                metadata=list(header.items()) or None,
                timeout=timeout,
            )
        except grpc.RpcError as err:  # anything else (TLS, not Ray...): Ray's own error
            return err.code() == grpc.StatusCode.UNAUTHENTICATED
    return False


def _refresh_token_mode() -> None:
    """Ray read the mode and the token when first asked: make it read them again."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):  # pragma: no cover - a Ray without them
        pass


def _address_name(address: str) -> str:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host == "localhost":
        host = LOOPBACK
    return f"{host.replace(':', '_')}_{port}.token"


def _prune(folder: Path) -> None:
    """Drop the tokens of sessions whose driver is gone (killed: its exit hook never ran)."""
    for f in folder.glob("session-*.token"):
        with contextlib.suppress(ValueError, IndexError):
            if not _alive(int(f.name.split("-")[1])):
                _remove(f)
    for link in folder.glob("*.token"):
        if link.is_symlink() and not link.exists():
            _remove(link)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
