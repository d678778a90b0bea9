"""A team MLflow tracking server on this machine: PostgreSQL backend plus proxied artifact store.

``python -m temseg_ablation.ops.server start|stop|status [--dir .server] [--port 5000]``

``start`` creates (once) a PostgreSQL cluster under ``<dir>/pg``, starts it on 127.0.0.1 only,
creates the ``mlflow`` database, then starts ``mlflow server`` with that database as backend
store and ``<dir>/artifacts`` as proxied artifact store (clients upload through the server).
``stop`` stops exactly what ``start`` started, found through ``<dir>/server.json``.
PostgreSQL refuses to run as root: as root it runs as the ``postgres`` system user (or
``--pg-user``). ``--backend sqlite`` runs the same server on a sqlite file (no PostgreSQL).
Sweeps point at it with ``logger.tracking_uri=http://127.0.0.1:<port>``.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "server.json"
PG_DB = "mlflow"
PG_ROLE = "temseg"
DEFAULT_DIR = ".server"
DEFAULT_PORT = 5000
DEFAULT_PG_PORT = 5433


class ServerError(RuntimeError):
    """The server could not be started, stopped or queried; ``str`` is one line."""


@dataclass
class ServerState:
    """What ``start`` started, as saved in ``<dir>/server.json``."""

    dir: str
    host: str
    port: int
    backend: str
    backend_uri: str
    artifacts: str
    mlflow_pid: int | None = None
    pg_port: int | None = None
    pg_user: str | None = None
    pg_started: bool = False
    auth: bool = False
    allowed_hosts: str | None = None

    @property
    def url(self) -> str:
        """Tracking URI for clients."""
        return f"http://{self.host}:{self.port}"


# --------------------------------------------------------------------------- helpers
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def pg_bindir() -> Path | None:
    """Folder of the PostgreSQL server programs (``initdb``, ``pg_ctl``), or None."""
    env = os.environ.get("PG_BINDIR")
    candidates = [Path(env)] if env else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                         key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                         reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()),
                None)


def postgres_unavailable() -> str | None:
    """Why a PostgreSQL-backed server cannot start here, or None when it can."""
    if pg_bindir() is None:
        return "PostgreSQL server programs (initdb, pg_ctl) not found: apt-get install -y postgresql"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "the psycopg2 driver is missing: pip install psycopg2-binary"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(os.environ.get("TEMSEG_PG_USER", "postgres"))
        except KeyError:
            return "running as root and no 'postgres' user to run PostgreSQL as"
    return None


def _load(state_dir: Path) -> ServerState | None:
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        return ServerState(**json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise ServerError(f"{path}: unreadable server state ({err})") from None


def _save(state: ServerState) -> None:
    path = Path(state.dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=1))
    os.replace(tmp, path)


def _pid_is_our_server(pid: int | None, port: int) -> bool:
    """True when ``pid`` is alive and is an ``mlflow server`` on ``port`` (not a reused pid)."""
    if not pid:
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in cmd]
    return "mlflow" in " ".join(args) and "server" in args and str(port) in args


def healthy(url: str, timeout_s: float = 2.0) -> bool:
    """True when the tracking server at ``url`` answers its health check."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- postgres
def _pg_cmd(state: ServerState, *args: str) -> list[str]:
    exe = str(pg_bindir() / args[0])
    if state.pg_user and os.geteuid() == 0:
        return ["runuser", "-u", state.pg_user, "--", exe, *args[1:]]
    return [exe, *args[1:]]


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None,
         ok_if: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode != 0 and not (ok_if and ok_if in proc.stderr + proc.stdout):
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise ServerError(f"{what} failed: {detail[-1] if detail else proc.returncode}")
    return proc


def _pg_running(state: ServerState) -> bool:
    data = Path(state.dir) / "pg" / "data"
    if not (data / "PG_VERSION").exists():
        return False
    return subprocess.run(_pg_cmd(state, "pg_ctl", "-D", str(data), "status"),
                          capture_output=True).returncode == 0


def _pg_env(state_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PGPASSWORD"] = (state_dir / "pg_password").read_text().strip()
    return env


def start_postgres(state: ServerState) -> None:
    """Create the cluster on first use, start it on ``state.host:state.pg_port``, create the db."""
    state_dir = Path(state.dir)
    pg_dir, data = state_dir / "pg", state_dir / "pg" / "data"
    if pg_bindir() is None:
        raise ServerError(postgres_unavailable() or "PostgreSQL not found")
    uid = gid = None
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam(state.pg_user or "postgres")
        except KeyError:
            raise ServerError(f"PostgreSQL refuses to run as root and there is no user "
                              f"{state.pg_user!r}: create one or pass --pg-user") from None
        uid, gid = entry.pw_uid, entry.pw_gid
    if not (data / "PG_VERSION").exists():
        pg_dir.mkdir(parents=True, exist_ok=True)
        pg_dir.chmod(0o700)
        if uid is not None:
            os.chown(pg_dir, uid, gid)
            probe = subprocess.run(["runuser", "-u", state.pg_user, "--", "test", "-w", str(pg_dir)],
                                   capture_output=True)
            if probe.returncode != 0:
                raise ServerError(f"{pg_dir}: user {state.pg_user} cannot reach this folder (a "
                                  "parent folder is closed to it); use --dir in an open place")
        password = secrets.token_urlsafe(24)
        pw_store = state_dir / "pg_password"
        pw_store.write_text(password)
        pw_store.chmod(0o600)
        fd, pwfile = tempfile.mkstemp(dir=pg_dir)
        try:
            os.write(fd, password.encode())
            os.close(fd)
            if uid is not None:
                os.chown(pwfile, uid, gid)
            _run(_pg_cmd(state, "initdb", "-D", str(data), "-U", PG_ROLE, f"--pwfile={pwfile}",
                         "--auth=scram-sha-256", "-E", "UTF8", "--no-locale"), "initdb")
        finally:
            Path(pwfile).unlink(missing_ok=True)
    if not _pg_running(state):
        if _port_in_use(state.host, int(state.pg_port)):
            raise ServerError(f"port {state.pg_port} on {state.host} is taken: choose --pg-port")
        opts = (f"-c listen_addresses={state.host} -p {state.pg_port} "
                f"-c unix_socket_directories={data}")
        _run(_pg_cmd(state, "pg_ctl", "-D", str(data), "-l", str(pg_dir / "postgres.log"),
                     "-w", "-t", "60", "-o", opts, "start"),
             f"starting PostgreSQL (log: {pg_dir / 'postgres.log'})")
        state.pg_started = True
        _save(state)
    client = shutil.which("createdb") or str(pg_bindir() / "createdb")
    _run([client, "-h", state.host, "-p", str(state.pg_port), "-U", PG_ROLE, PG_DB],
         "creating the mlflow database", env=_pg_env(state_dir), ok_if="already exists")


def stop_postgres(state: ServerState) -> None:
    """Stop the cluster if ``start`` started it."""
    if state.backend != "postgres" or not _pg_running(state):
        return
    data = Path(state.dir) / "pg" / "data"
    _run(_pg_cmd(state, "pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"), "stopping PostgreSQL")


# --------------------------------------------------------------------------- mlflow
def _auth_env(state_dir: Path) -> dict[str, str]:
    try:
        import flask_wtf  # noqa: F401
    except ImportError:
        raise ServerError("--auth needs MLflow's auth extra: pip install 'mlflow[auth]'") from None
    if not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        raise ServerError("--auth: set MLFLOW_AUTH_ADMIN_PASSWORD (the admin's first password)")
    ini = state_dir / "basic_auth.ini"
    if not ini.exists():  # keep the user database beside the server, not in the start folder
        ini.write_text("[mlflow]\ndefault_permission = READ\n"
                       f"database_uri = sqlite:///{(state_dir / 'basic_auth.db').resolve()}\n"
                       "admin_username = admin\n"
                       "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    secret = state_dir / "flask_secret"  # CSRF key: must stay the same across restarts
    if not secret.exists():
        secret.write_text(secrets.token_hex(32))
        secret.chmod(0o600)
    return {"MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY")
            or secret.read_text().strip()}


def start_mlflow(state: ServerState, workers: int = 2, timeout_s: float = 120.0) -> None:
    """Start ``mlflow server`` in its own process group and wait until it answers."""
    state_dir = Path(state.dir)
    if _port_in_use(state.host, state.port):
        raise ServerError(f"port {state.port} on {state.host} is taken: choose --port")
    Path(state.artifacts).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    uri = state.backend_uri
    if state.backend == "postgres":
        env = _pg_env(state_dir)  # the password travels in the environment, not the command line
    env.update(_auth_env(state_dir) if state.auth else {})
    # MLflow's background job runner (GenAI evaluation jobs) is of no use here: 4+ fewer processes
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--artifacts-destination", state.artifacts, "--serve-artifacts",
           "--host", state.host, "--port", str(state.port), "--workers", str(workers)]
    if state.auth:
        cmd += ["--app-name", "basic-auth"]
    if state.allowed_hosts:
        cmd += ["--allowed-hosts", state.allowed_hosts]
    log_path = state_dir / "mlflow.log"
    with open(log_path, "ab") as log_fh:
        proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=state_dir)
    state.mlflow_pid = proc.pid
    _save(state)
    deadline = time.monotonic() + timeout_s
    while not healthy(state.url):
        if proc.poll() is not None:
            state.mlflow_pid = None
            _save(state)
            raise ServerError(f"mlflow server exited with status {proc.returncode}; "
                              f"log {log_path}:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            stop_mlflow(state)
            raise ServerError(f"mlflow server did not answer within {timeout_s:.0f} s; "
                              f"log {log_path}:\n{_tail(log_path)}")
        time.sleep(0.5)


def stop_mlflow(state: ServerState, timeout_s: float = 20.0) -> bool:
    """Stop the server's process group (TERM, then KILL); True when one was running."""
    pid = state.mlflow_pid
    if not _pid_is_our_server(pid, state.port):
        state.mlflow_pid = None
        _save(state)
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _pid_is_our_server(pid, state.port):
        try:
            os.waitpid(pid, os.WNOHANG)  # reap when it is our own child (tests)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)  # workers left behind, or a server that ignored TERM
    except (ProcessLookupError, PermissionError):
        pass
    state.mlflow_pid = None
    _save(state)
    return True


# --------------------------------------------------------------------------- public API
def start(state_dir: str | Path = DEFAULT_DIR, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          backend: str = "postgres", pg_port: int = DEFAULT_PG_PORT, pg_user: str | None = None,
          workers: int = 2, auth: bool = False, allowed_hosts: str | None = None,
          timeout_s: float = 120.0) -> ServerState:
    """Start (or find running) the tracking server kept in ``state_dir``; returns its state.

    ``port`` / ``pg_port`` 0 pick free ports. Binds to ``host`` (127.0.0.1 unless told).
    """
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    old = _load(state_dir)
    if old is not None and _pid_is_our_server(old.mlflow_pid, old.port) and healthy(old.url):
        return old
    if backend not in ("postgres", "sqlite"):
        raise ServerError(f"unknown backend {backend!r} (postgres or sqlite)")
    if old is not None and old.backend == backend:
        pg_port = old.pg_port or pg_port
    port = port or free_port(host)
    if backend == "postgres":
        pg_port = pg_port or free_port(host)
        # explicit driver: SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3
        uri = f"postgresql+psycopg2://{PG_ROLE}@{host}:{pg_port}/{PG_DB}"
    else:
        uri = f"sqlite:///{state_dir / 'mlflow.db'}"
    user = (pg_user or os.environ.get("TEMSEG_PG_USER", "postgres")) if os.geteuid() == 0 else None
    state = ServerState(dir=str(state_dir), host=host, port=int(port), backend=backend,
                        backend_uri=uri, artifacts=str(state_dir / "artifacts"),
                        pg_port=int(pg_port) if backend == "postgres" else None, pg_user=user,
                        pg_started=bool(old and old.pg_started), auth=auth,
                        allowed_hosts=allowed_hosts)
    _save(state)
    if backend == "postgres":
        start_postgres(state)
    start_mlflow(state, workers=workers, timeout_s=timeout_s)
    return state


def stop(state_dir: str | Path = DEFAULT_DIR, *, keep_database: bool = False) -> list[str]:
    """Stop what ``start`` started in ``state_dir``; returns what was stopped."""
    state = _load(Path(state_dir).resolve())
    if state is None:
        return []
    stopped = ["mlflow server"] if stop_mlflow(state) else []
    if not keep_database and state.backend == "postgres" and _pg_running(state):
        stop_postgres(state)
        state.pg_started = False
        _save(state)
        stopped.append("PostgreSQL")
    return stopped


def status(state_dir: str | Path = DEFAULT_DIR) -> dict[str, object]:
    """Whether the server (and its PostgreSQL) kept in ``state_dir`` are running."""
    state = _load(Path(state_dir).resolve())
    if state is None:
        return {"running": False, "reason": f"no server started from {state_dir}"}
    alive = _pid_is_our_server(state.mlflow_pid, state.port)
    out: dict[str, object] = {"running": alive and healthy(state.url), "url": state.url,
                              "backend": state.backend, "mlflow_pid": state.mlflow_pid if alive else None,
                              "artifacts": state.artifacts}
    if state.backend == "postgres":
        out.update(postgres_running=_pg_running(state), pg_port=state.pg_port)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: ``start`` / ``stop`` / ``status``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--dir", default=os.environ.get("TEMSEG_SERVER_DIR", DEFAULT_DIR),
                        help="state folder: database, artifacts, logs, pid (default %(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default %(default)s: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="MLflow port (0: any free)")
    parser.add_argument("--pg-port", type=int, default=DEFAULT_PG_PORT, help="PostgreSQL port")
    parser.add_argument("--pg-user", default=None, help="user PostgreSQL runs as when started as root")
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--workers", type=int, default=2, help="MLflow server worker processes")
    parser.add_argument("--auth", action="store_true",
                        help="MLflow basic authentication (needs MLFLOW_AUTH_ADMIN_PASSWORD)")
    parser.add_argument("--allowed-hosts", default=None,
                        help="Host headers MLflow accepts besides localhost and private IPs "
                             "(e.g. mlflow.lab.example:5000), for a server shared by name")
    parser.add_argument("--keep-database", action="store_true",
                        help="stop: leave PostgreSQL running, stop only the MLflow server")
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            st = start(args.dir, host=args.host, port=args.port, backend=args.backend,
                       pg_port=args.pg_port, pg_user=args.pg_user, workers=args.workers,
                       auth=args.auth, allowed_hosts=args.allowed_hosts)
            print(f"MLflow tracking server at {st.url} ({st.backend} backend, artifacts in "
                  f"{st.artifacts}, logs in {st.dir})")
            print(f"use it with: logger.tracking_uri={st.url}")
        elif args.action == "stop":
            stopped = stop(args.dir, keep_database=args.keep_database)
            print("stopped: " + ", ".join(stopped) if stopped else "nothing was running")
        else:
            info = status(args.dir)
            print(json.dumps(info, indent=1))
            return 0 if info.get("running") else 3
    except ServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
