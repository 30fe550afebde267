"""Start real servers on 127.0.0.1 for tests, and stop them by their own PID."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"no answer from {url} in {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    """Stop a server we started, by its own PID: politely, then for sure."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def chroma_server(path: Path):
    """`chroma run` on a loopback port; yields its URL."""
    port = free_port()
    exe = Path(sys.executable).parent / "chroma"
    proc = subprocess.Popen([str(exe), "run", "--path", str(path), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/api/v2/heartbeat", proc)
        yield url
    finally:
        stop(proc)


@contextlib.contextmanager
def app_server(workdir: Path, tracking_uri: str, extra_env: dict | None = None,
               host: str = "127.0.0.1", args: tuple = (), path: str = "/"):
    """`hyrax-mlops app` on a loopback port, reading `tracking_uri`; yields its URL (its
    pages under `path`)."""
    import os

    port = free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, **(extra_env or {}))
    exe = Path(sys.executable).parent / "hyrax-mlops"
    proc = subprocess.Popen([str(exe), "app", "--host", host, "--port", str(port), *args],
                            cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # its request log would fill a pipe
    url = f"http://{host}:{port}{path}"
    try:
        wait_http(url, proc, timeout=60) if not extra_env or "HYRAX_APP_TOKEN" not in extra_env \
            else _wait_port(host, port, proc)
        yield url
    finally:
        stop(proc)


def _wait_port(host: str, port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on {host}:{port}")


@contextlib.contextmanager
def ray_head(env: dict):
    """`ray start --head` on 127.0.0.1 with its own temp dir; yields its GCS `address` and
    job-server `dashboard` URL.

    `ray stop` would kill every Ray on the machine: this stops only the processes whose
    command line names our temp dir, with SIGKILL (Ray's daemons ignore SIGTERM).
    """
    import os
    import shutil
    import signal
    import tempfile

    import psutil

    temp = tempfile.mkdtemp(prefix="hrt-", dir="/tmp")  # short: Ray's socket paths are limited
    port, dash = free_port(), free_port()
    exe = Path(sys.executable).parent / "ray"
    subprocess.run([str(exe), "start", "--head", "--node-ip-address=127.0.0.1",
                    f"--port={port}", "--num-cpus=2", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash}", f"--temp-dir={temp}", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=120)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield {"address": f"127.0.0.1:{port}", "dashboard": url}
    finally:
        ours = [p for p in psutil.process_iter(["pid", "cmdline"])
                if temp in " ".join(p.info["cmdline"] or []) and p.pid != os.getpid()]
        for proc in list(ours):  # agents rename themselves ("ray::DashboardAgent"): children
            with contextlib.suppress(psutil.Error):
                ours += proc.children(recursive=True)
        for proc in ours:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


@contextlib.contextmanager
def model_server(model_uri: str, tracking_uri: str, log: Path):
    """`mlflow models serve` of a registered model on 127.0.0.1; yields its URL."""
    import os

    port = free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri,  # the venv on PATH: uvicorn
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            try:
                wait_http(f"http://127.0.0.1:{port}/ping", proc, timeout=180)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{exc}\n{log.read_text()[-3000:]}") from None
            yield f"http://127.0.0.1:{port}"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)  # uvicorn and its worker: the whole session
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait()
