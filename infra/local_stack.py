#!/usr/bin/env python3
"""The team's shared services on one machine, every one bound to 127.0.0.1 on a free port.

    infra/local-stack start  --dir DIR [--no-ray]   # prints `export K=V` lines on stdout
    infra/local-stack status --dir DIR
    infra/local-stack env    --dir DIR
    infra/local-stack stop   --dir DIR

What `start` runs (logs in DIR/logs/, state in DIR/stack.json):

- PostgreSQL (Debian's packages): a throwaway cluster, database `mlflow`, trust auth on
  127.0.0.1 only. As root, initdb/pg_ctl run as the `postgres` OS user.
- An S3-compatible store: `moto_server` (in memory), bucket `hyrax`, dummy credentials.
- An MLflow tracking server on PostgreSQL, proxying artifacts to s3://hyrax/mlflow, so its
  clients need no S3 credentials.
- A Chroma server behind a token: chromadb 1.5's Rust server has no working token auth (its
  auth hook is a no-op; the documented CHROMA_SERVER_AUTHN_* settings are ignored), so Chroma
  listens on a private loopback port and `token_proxy.py` is the published endpoint. Clients
  send `X-Chroma-Token: <token>` or `Authorization: Bearer <token>`; the token is in
  DIR/chroma.token (mode 600).
- A Ray head (one CPU, dashboard and job server on loopback), unless `--no-ray`.

Every start is a fresh, empty stack (moto keeps S3 in memory, so old metadata would point at
lost artifacts). `stop` stops by PID only what this stack started: each service runs in its own
session, and a PID is trusted only while its start time matches the one recorded. It never
runs `ray stop` (which would kill every Ray on the machine).

From Python (tests):

    from local_stack import LocalStack, StackError
    with LocalStack(tmp_path / "stack", ray=False) as stack:
        os.environ.update(stack.env)
        ...
        stack.restart_mlflow()
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

HOST = "127.0.0.1"
BUCKET = "hyrax"
ARTIFACT_ROOT = f"s3://{BUCKET}/mlflow"
PG_DATABASE = "mlflow"
PG_INSTALL_HINT = "apt-get install -y postgresql"
STATE_FILE = "stack.json"
TOKEN_FILE = "chroma.token"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "hyrax-local",
    "AWS_SECRET_ACCESS_KEY": "hyrax-local-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    # With usage stats off, the dashboard of a `ray start` cluster still sends one "disabled"
    # report to usage-stats.ray.io (a DNS lookup at least): point it at a dead loopback port.
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
}
# Variables of the caller's environment that must not leak into the services.
_SCRUB = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
          "AWS_ENDPOINT_URL_S3", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
# Stop order: clients of a service before the service.
_STOP_ORDER = ("mlflow", "chroma_proxy", "chroma", "ray", "s3", "postgres")
_RAY_PORTS = ("port", "dashboard", "client", "agent_listen", "agent_grpc", "node_manager",
              "object_manager", "runtime_env_agent", "metrics")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StackError(RuntimeError):
    """A service of the local stack could not be started (the message says why)."""


# -- processes (psutil) -------------------------------------------------------------------------
# A process is known by [pid, create time]: a PID reused by a later process is not it.
def _process(pid: int, start: float | None = None) -> psutil.Process | None:
    """The live process `pid` (the one created at `start`, when given), else None."""
    try:
        proc = psutil.Process(pid)
        if start is not None and abs(proc.create_time() - start) > 1e-3:
            return None
        return None if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD) else proc
    except psutil.Error:
        return None


def _ident(pid: int) -> list | None:
    """[pid, create time]: what identifies a process across PID reuse."""
    proc = _process(pid)
    with contextlib.suppress(psutil.Error):
        return None if proc is None else [pid, proc.create_time()]
    return None


def _alive(pid: int, start: float | None = None) -> bool:
    return _process(pid, start) is not None


def _live(procs) -> list[list]:
    out = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                out.append([proc.pid, proc.create_time()])
    return out


def _session(sid: int, not_before: float) -> list[list]:
    """Live processes of session `sid` started no earlier than the session's leader."""
    def member(proc: psutil.Process) -> bool:
        with contextlib.suppress(psutil.Error, OSError):
            return os.getsid(proc.pid) == sid and proc.create_time() >= not_before
        return False

    return _live(p for p in psutil.process_iter() if member(p))


def _children(pid: int) -> list[list]:
    proc = _process(pid)
    with contextlib.suppress(psutil.Error):
        return [] if proc is None else _live(proc.children())
    return []


def _terminate(procs: list[list], timeout: float = 10.0, hard: bool = False) -> list[int]:
    """SIGTERM (or SIGKILL if `hard`) `procs`, SIGKILL what outlives `timeout`; the survivors.
    A zombie counts as gone (a container's init may never reap it)."""
    live = [p for p in (_process(pid, start) for pid, start in procs) if p is not None]
    for sig, wait in ((signal.SIGKILL if hard else signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        for proc in live:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        deadline = time.monotonic() + wait
        while live and time.monotonic() < deadline:
            _, live = psutil.wait_procs(live, timeout=0.1)
            live = [p for p in live if _process(p.pid) is not None]
        if not live:
            break
    return [p.pid for p in live]


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_open(port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=timeout):
        return True
    return False


def _http_status(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> int:
    """The HTTP status of GET `url` (never through a proxy), or 0 if nothing answered."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with _NO_PROXY.open(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return 0


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log at {path})"
    return f"--- last lines of {path} ---\n" + "\n".join(text)


def _exe(name: str) -> str:
    """A console script of this Python's environment (the venv), else one on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise StackError(f"`{name}` not found: pip install -e '.[team,ray]' (or the package "
                         f"that provides it) into this environment")
    return found


# -- PostgreSQL ------------------------------------------------------------------------------
def _pg_bindir() -> Path:
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda p: int(p.parent.name) if p.parent.name.isdigit()
                         else 0, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for d in candidates:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    raise StackError(f"PostgreSQL is not installed (no initdb/pg_ctl): {PG_INSTALL_HINT}")


def postgres_available() -> bool:
    """Whether the PostgreSQL server binaries (and, as root, the postgres user) are here."""
    try:
        _pg_bindir()
    except StackError:
        return False
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return False
        return shutil.which("runuser") is not None
    return True


# -- the stack ---------------------------------------------------------------------------------
class LocalStack:
    """PostgreSQL + S3 (moto) + MLflow + token-gated Chroma + Ray, on 127.0.0.1, under `root`."""

    def __init__(self, root: Path, ray: bool = True) -> None:
        self.root = Path(root).expanduser().absolute()
        self.ray = ray
        self.logs = self.root / "logs"
        self.state_path = self.root / STATE_FILE
        self.chroma_token_file = self.root / TOKEN_FILE
        self.bucket = BUCKET
        self.env: dict[str, str] = {}
        self.mlflow_url = self.chroma_url = self.s3_endpoint = ""
        self.ray_address: str | None = None
        self.state: dict[str, Any] = {"root": str(self.root), "services": {}}
        self._popen: dict[int, subprocess.Popen] = {}

    # .. public API ............................................................................
    @classmethod
    def from_dir(cls, root: Path) -> LocalStack:
        """The stack whose state is in `root`/stack.json (for stop/status from another process)."""
        stack = cls(root)
        if stack.state_path.exists():
            stack.state = json.loads(stack.state_path.read_text())
            stack.ray = "ray" in stack.state.get("services", {})
            stack._load_urls()
        return stack

    def start(self) -> LocalStack:
        """Start every service (fresh), wait until each answers; StackError if one can't."""
        if self.state_path.exists() and LocalStack.from_dir(self.root).running():
            raise StackError(f"a stack is already running from {self.root}: stop it first")
        t0 = time.monotonic()
        try:
            self._start(t0)
        except BaseException as e:
            with contextlib.suppress(Exception):
                self.stop()
            if isinstance(e, StackError):
                raise
            if isinstance(e, Exception):
                raise StackError(f"local stack failed to start: {e!r}") from e
            raise
        return self

    def stop(self) -> list[int]:
        """Stop every service this stack started (idempotent); the PIDs that would not die."""
        services = self.state.get("services", {})
        survivors: list[int] = []
        for name in _STOP_ORDER:
            if name in services:
                survivors += self._stop_service(name)
        for p in self._popen.values():
            with contextlib.suppress(Exception):
                p.poll()
        self._popen.clear()
        if services:
            self.state["running"] = False
            self._save()
        return survivors

    def restart_mlflow(self, timeout: float = 120.0) -> None:
        """Stop the MLflow server and start it again on the same port; wait for /health."""
        svc = self.state["services"].get("mlflow")
        if not svc:
            raise StackError("MLflow is not part of this stack (was it started?)")
        left = self._stop_service("mlflow")
        if left:
            raise StackError(f"MLflow server processes {left} would not stop")
        deadline = time.monotonic() + 30
        while _port_open(svc["port"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        self._launch_mlflow(svc["port"])
        self._wait_http("mlflow", f"{self.mlflow_url}/health", timeout)

    def running(self) -> bool:
        """Whether any process this stack started is still alive."""
        return any(self._service_pids(n) for n in self.state.get("services", {}))

    def status(self) -> dict[str, bool]:
        """{service: up?}: its process alive and its port answering (MLflow: /health)."""
        out = {}
        for name, svc in self.state.get("services", {}).items():
            alive = bool(self._service_pids(name))
            if name == "mlflow":
                up = alive and _http_status(f"{svc['url']}/health") == 200
            else:
                up = alive and _port_open(svc["port"])
            out[name] = up
        return out

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # .. start ..................................................................................
    def _start(self, t0: float) -> None:
        bindir = _pg_bindir()  # fail before starting anything if PostgreSQL is missing
        as_root = os.geteuid() == 0
        if as_root and not postgres_available():
            raise StackError(f"running as root needs the `postgres` user and runuser: "
                             f"{PG_INSTALL_HINT}")
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("pg", "chroma", "ray", "logs"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        self.logs.mkdir()
        os.chmod(self.logs, 0o755)  # the postgres user writes its log here
        ports = _free_ports(5 + (len(_RAY_PORTS) if self.ray else 0))
        pg_port, s3_port, mlflow_port, chroma_port, proxy_port = ports[:5]
        self.state = {"root": str(self.root), "running": True, "services": {},
                      "started_at": time.time(), "timings": {}}
        self._write_token()
        self._save()

        def mark(name: str) -> None:
            self.state["timings"][name] = round(time.monotonic() - t0, 2)

        # Launched first, waited for later: they start while PostgreSQL initialises.
        self._launch("s3", [_exe("moto_server"), "-H", HOST, "-p", str(s3_port)], s3_port,
                     url=f"http://{HOST}:{s3_port}", bucket=BUCKET)
        (self.root / "chroma").mkdir()
        self._launch("chroma", [_exe("chroma"), "run", "--path", str(self.root / "chroma"),
                                "--host", HOST, "--port", str(chroma_port)],
                     chroma_port, url=f"http://{HOST}:{chroma_port}")
        proxy = Path(__file__).with_name("token_proxy.py")
        self._launch("chroma_proxy", [sys.executable, str(proxy), "--listen-port",
                                      str(proxy_port), "--upstream",
                                      f"http://{HOST}:{chroma_port}", "--token-file",
                                      str(self.chroma_token_file)],
                     proxy_port, url=f"http://{HOST}:{proxy_port}",
                     token_file=str(self.chroma_token_file))
        ray_start = None
        if self.ray:
            ray_start = self._launch_ray(dict(zip(_RAY_PORTS, ports[5:], strict=True)),
                                         dashboard=True)

        self._start_postgres(bindir, pg_port, as_root)
        mark("postgres")
        self._wait_http("s3", f"http://{HOST}:{s3_port}/", 60, ok=lambda s: 0 < s < 500)
        self._create_bucket()
        mark("s3")
        self._launch_mlflow(mlflow_port)
        self._load_urls()
        token = self.chroma_token_file.read_text().strip()
        self._wait_http("chroma_proxy", f"{self.chroma_url}/api/v2/heartbeat", 60,
                        headers={"X-Chroma-Token": token}, behind=("chroma",))
        mark("chroma")
        if ray_start is not None:
            self._finish_ray(ray_start)
            mark("ray")
        self._wait_http("mlflow", f"{self.mlflow_url}/health", 180)
        mark("mlflow")
        self.state["timings"]["total"] = round(time.monotonic() - t0, 2)
        self._load_urls()
        self._save()

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in _SCRUB and not k.startswith("PG")}
        env.update(AWS_ENV)
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        return env

    def _launch(self, name: str, cmd: list[str], port: int, env: dict[str, str] | None = None,
                log: str | None = None, **info: Any) -> subprocess.Popen:
        """Start `cmd` in a session of its own, its output in logs/<name>.log; record it."""
        log_path = self.logs / (log or f"{name}.log")
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=self.root,
                                    env=env or self._base_env(), start_new_session=True)
        self._popen[proc.pid] = proc
        ident = _ident(proc.pid) or [proc.pid, 0]
        self.state["services"][name] = {"pids": [ident], "session": ident, "port": port,
                                        "log": str(log_path), **info}
        self._save()
        return proc

    def _wait_http(self, name: str, url: str, timeout: float,
                   headers: dict[str, str] | None = None, ok=lambda s: s == 200,
                   behind: tuple[str, ...] = ()) -> None:
        """Poll `url` until `ok(status)`; fail early if `name` (or one of `behind`) exits."""
        svc = self.state["services"][name]
        deadline = time.monotonic() + timeout
        while True:
            status = _http_status(url, headers)
            if ok(status):
                return
            for n in (name, *behind):
                other = self.state["services"][n]
                if not _alive(*other["pids"][0]):
                    raise StackError(f"{n} exited before {url} answered\n"
                                     f"{_tail(Path(other['log']))}")
            if time.monotonic() > deadline:
                raise StackError(f"{name} did not answer {url} within {timeout:.0f} s "
                                 f"(last status {status})\n{_tail(Path(svc['log']))}")
            time.sleep(0.2)

    def _write_token(self) -> None:
        old = ""
        with contextlib.suppress(OSError):
            old = self.chroma_token_file.read_text().strip()
        token = old or secrets.token_urlsafe(32)
        fd = os.open(self.chroma_token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.chmod(self.chroma_token_file, 0o600)

    def _create_bucket(self) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as e:
            raise StackError("boto3 is missing: pip install -e '.[team]'") from e
        s3 = boto3.client("s3", endpoint_url=self.state["services"]["s3"]["url"],
                          aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
                          region_name=AWS_ENV["AWS_DEFAULT_REGION"],
                          config=Config(proxies={}, retries={"max_attempts": 3}))
        s3.create_bucket(Bucket=BUCKET)

    # .. PostgreSQL .............................................................................
    def _start_postgres(self, bindir: Path, port: int, as_root: bool) -> None:
        home = self.root / "pg"
        home.mkdir()
        owned_tmp = False

        def as_pg(cmd: list[str]) -> list[str]:
            return ["runuser", "-u", "postgres", "--", *cmd] if as_root else cmd

        if as_root:
            shutil.chown(home, "postgres", "postgres")
            reachable = subprocess.run(as_pg(["test", "-w", str(home)]), cwd="/").returncode == 0
            if not reachable:  # e.g. under pytest's 0700 tmp dirs: use a dir postgres can reach
                home.rmdir()
                home = Path(tempfile.mkdtemp(prefix="hyrax-pg-", dir="/tmp"))
                shutil.chown(home, "postgres", "postgres")
                owned_tmp = True
        data, sock = home / "data", home / "sock"
        log = (home / "postgres.log") if owned_tmp else (self.logs / "postgres.log")
        log.touch()
        if owned_tmp:
            with contextlib.suppress(OSError):
                (self.logs / "postgres.log").symlink_to(log)
        if as_root:
            shutil.chown(log, "postgres", "postgres")
        for d in (data, sock):
            d.mkdir(mode=0o700)
            if as_root:
                shutil.chown(d, "postgres", "postgres")
        svc = {"pids": [], "session": None, "port": port, "home": str(home),
               "home_is_temp": owned_tmp, "data": str(data), "bindir": str(bindir),
               "as_root": as_root, "log": str(log),
               "url": f"postgresql+psycopg://postgres@{HOST}:{port}/{PG_DATABASE}"}
        self.state["services"]["postgres"] = svc
        self._save()
        env = self._base_env()
        env["LC_ALL"] = env["LANG"] = "C.UTF-8"
        out_log = self.logs / "postgres-setup.log"

        def run(cmd: list[str], what: str, timeout: float = 120) -> None:
            with open(out_log, "ab") as out:
                rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, cwd="/", env=env,
                                    timeout=timeout).returncode
            if rc != 0:
                raise StackError(f"PostgreSQL: {what} failed (exit {rc})\n{_tail(out_log)}\n"
                                 f"{_tail(log)}")

        run(as_pg([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                   "-E", "UTF8", "--no-locale", "--no-sync"]), "initdb")
        opts = (f"-c listen_addresses={HOST} -p {port} -k {sock} -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off")
        run(as_pg([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts,
                   "-w", "-t", "60", "start"]), "pg_ctl start")
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((data / "postmaster.pid").read_text().split()[0])
            ident = _ident(pid)
            if ident:
                svc["pids"] = [ident]
        self._save()
        run([str(bindir / "createdb"), "-h", HOST, "-p", str(port), "-U", "postgres",
             PG_DATABASE], "createdb")

    def _stop_postgres(self, svc: dict[str, Any]) -> list[int]:
        procs = [p for p in svc.get("pids", []) if _alive(*p)]
        data = Path(svc["data"])
        if procs or (data / "postmaster.pid").exists():
            cmd = [str(Path(svc["bindir"]) / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                   "-t", "30", "stop"]
            if svc.get("as_root"):
                cmd = ["runuser", "-u", "postgres", "--", *cmd]
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, cwd="/",
                               timeout=60)
        left = []
        for pid, start in procs:
            if _alive(pid, start):
                left += _terminate(_children(pid) + [[pid, start]], timeout=5)
        if svc.get("home_is_temp") and not left:
            shutil.rmtree(svc["home"], ignore_errors=True)
        return left

    # .. MLflow ................................................................................
    def _launch_mlflow(self, port: int) -> None:
        s3 = self.state["services"]["s3"]
        pg = self.state["services"]["postgres"]
        env = self._base_env()
        env.update(MLFLOW_S3_ENDPOINT_URL=s3["url"], MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        cmd = [_exe("mlflow"), "server", "--backend-store-uri", pg["url"],
               "--artifacts-destination", ARTIFACT_ROOT, "--serve-artifacts",
               "--host", HOST, "--port", str(port), "--workers", "1"]
        self._launch("mlflow", cmd, port, env=env, url=f"http://{HOST}:{port}",
                     artifacts_destination=ARTIFACT_ROOT)
        self.mlflow_url = f"http://{HOST}:{port}"

    # .. Ray ....................................................................................
    def _launch_ray(self, ports: dict[str, int], dashboard: bool) -> subprocess.Popen:
        temp = self.root / "ray"
        # Ray's Unix sockets live under the temp dir and must fit in 107 bytes.
        temp_is_tmp = len(str(temp)) > 40
        if temp_is_tmp:
            temp = Path(tempfile.mkdtemp(prefix="hyrax-ray-", dir="/tmp"))
        temp.mkdir(exist_ok=True)
        home = self.root / "ray-home"
        home.mkdir(exist_ok=True)
        (home / "ray_bootstrap_config.yaml").write_text("provider: {type: local}\n")
        env = self._base_env()
        env.update(RAY_ENV, HOME=str(home))
        cmd = [_exe("ray"), "start", "--head", f"--node-ip-address={HOST}",
               "--port", str(ports["port"]), "--num-cpus", "1",
               "--ray-client-server-port", str(ports["client"]),
               "--node-manager-port", str(ports["node_manager"]),
               "--object-manager-port", str(ports["object_manager"]),
               "--runtime-env-agent-port", str(ports["runtime_env_agent"]),
               "--dashboard-agent-listen-port", str(ports["agent_listen"]),
               "--dashboard-agent-grpc-port", str(ports["agent_grpc"]),
               "--metrics-export-port", str(ports["metrics"]),
               "--temp-dir", str(temp), "--disable-usage-stats"]
        if dashboard:
            cmd += ["--include-dashboard=true", "--dashboard-host", HOST,
                    "--dashboard-port", str(ports["dashboard"])]
        else:
            cmd += ["--include-dashboard=false"]
        info = {"address": f"{HOST}:{ports['port']}", "ports": ports, "temp_dir": str(temp),
                "temp_dir_is_tmp": temp_is_tmp, "home": str(home), "dashboard": dashboard,
                "url": f"http://{HOST}:{ports['dashboard']}" if dashboard else None}
        return self._launch("ray", cmd, ports["port"], env=env, log="ray-start.log", **info)

    def _finish_ray(self, proc: subprocess.Popen, timeout: float = 120) -> None:
        svc = self.state["services"]["ray"]
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
        if rc != 0 and svc["dashboard"]:  # try once more without the dashboard
            self._stop_service("ray")
            proc = self._launch_ray(svc["ports"], dashboard=False)
            return self._finish_ray(proc, timeout)
        if rc != 0:
            raise StackError(f"`ray start` failed (exit {rc})\n{_tail(Path(svc['log']))}")
        sid, start = svc["session"]
        svc["pids"] = _session(sid, start)
        if not _port_open(svc["port"]):
            raise StackError(f"Ray GCS is not listening on {svc['address']}\n"
                             f"{_tail(Path(svc['log']))}")
        with contextlib.suppress(OSError):
            (self.logs / "ray").symlink_to(Path(svc["temp_dir"]) / "session_latest" / "logs")
        self._save()

    # .. stop ..................................................................................
    def _service_pids(self, name: str) -> list[list]:
        svc = self.state["services"][name]
        procs = [p for p in svc.get("pids", []) if _alive(*p)]
        if svc.get("session"):
            sid, start = svc["session"]
            known = {p for p, _ in procs}
            procs += [p for p in _session(sid, start) if p[0] not in known]
        return procs

    def _stop_service(self, name: str) -> list[int]:
        svc = self.state["services"][name]
        if name == "postgres":
            left = self._stop_postgres(svc)
        else:
            # Ray's gcs_server, raylet and friends ignore SIGTERM: they get SIGKILL at once.
            left = _terminate(self._service_pids(name), timeout=15, hard=(name == "ray"))
        for pid in list(self._popen):
            if not _alive(pid):
                with contextlib.suppress(Exception):
                    self._popen.pop(pid).wait(timeout=1)
        if name == "ray" and svc.get("temp_dir_is_tmp") and not left:
            temp = Path(svc["temp_dir"])
            with contextlib.suppress(OSError):
                (self.logs / "ray").unlink()
            with contextlib.suppress(OSError):  # keep Ray's logs with the stack's
                shutil.copytree(temp / "session_latest" / "logs", self.logs / "ray",
                                dirs_exist_ok=True, symlinks=True,
                                ignore=shutil.ignore_patterns("*.sock"))
            shutil.rmtree(temp, ignore_errors=True)
        return left

    # .. state ..................................................................................
    def _load_urls(self) -> None:
        services = self.state.get("services", {})
        if "mlflow" in services:
            self.mlflow_url = services["mlflow"]["url"]
        if "chroma_proxy" in services:
            self.chroma_url = services["chroma_proxy"]["url"]
        if "s3" in services:
            self.s3_endpoint = services["s3"]["url"]
        if "ray" in services:
            self.ray_address = services["ray"]["address"]
        self.env = self._export_env()
        self.state["env"] = self.env

    def _export_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.mlflow_url:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_url
        if self.chroma_url:
            env["HYRAX_CHROMA_URL"] = self.chroma_url
            env["CHROMA_TOKEN_FILE"] = str(self.chroma_token_file)
        if self.s3_endpoint:
            env["MLFLOW_S3_ENDPOINT_URL"] = self.s3_endpoint
            env["AWS_ENDPOINT_URL_S3"] = self.s3_endpoint
            env.update(AWS_ENV)
        if self.ray_address:
            env["RAY_ADDRESS"] = self.ray_address
            env.update(RAY_ENV)
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        return env

    def _save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.state, indent=2, default=str) + "\n")
        tmp.replace(self.state_path)


# -- command line ------------------------------------------------------------------------------
def _exports(env: dict[str, str]) -> str:
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="local-stack",
                                 description="The team services on 127.0.0.1 (see the docstring "
                                             "of infra/local_stack.py).")
    ap.add_argument("command", choices=("start", "stop", "status", "env"))
    ap.add_argument("--dir", default=".hyrax/local-stack", type=Path,
                    help="where the stack keeps its data, logs and stack.json")
    ap.add_argument("--no-ray", action="store_true", help="don't start a Ray head")
    args = ap.parse_args(argv)

    if args.command == "start":
        stack = LocalStack(args.dir, ray=not args.no_ray)
        print(f"[local-stack] starting in {stack.root} ...", file=sys.stderr, flush=True)
        try:
            stack.start()
        except StackError as e:
            print(f"[local-stack] {e}", file=sys.stderr)
            return 1
        t = stack.state["timings"]
        print(f"[local-stack] up in {t['total']:.1f} s "
              f"({', '.join(f'{k} {v:.1f}' for k, v in t.items() if k != 'total')}); "
              f"state in {stack.state_path}", file=sys.stderr)
        print(_exports(stack.env))
        return 0

    stack = LocalStack.from_dir(args.dir)
    if not stack.state_path.exists():
        print(f"[local-stack] no stack in {stack.root}", file=sys.stderr)
        return 0 if args.command == "stop" else 1
    if args.command == "stop":
        left = stack.stop()
        if left:
            print(f"[local-stack] processes that would not die: {left}", file=sys.stderr)
            return 1
        print(f"[local-stack] stopped ({stack.root})", file=sys.stderr)
        return 0
    if args.command == "env":
        print(_exports(stack.env))
        return 0
    up = stack.status()
    for name, ok in up.items():
        svc = stack.state["services"][name]
        pids = " ".join(str(p) for p, _ in stack._service_pids(name)) or "-"
        print(f"{name:13} {'up' if ok else 'DOWN':5} {svc.get('url') or ''}  pids: {pids}")
    return 0 if up and all(up.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
