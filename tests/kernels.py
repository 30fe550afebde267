"""A real Jupyter kernel (ipykernel, through jupyter_client) for tests: code run in it as a
notebook cell runs, its outputs as the notebook would show them; and a Jupyter Server with
jupyter-server-proxy, as JupyterLab runs on the Rubin Science Platform."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from pathlib import Path

from servers import free_port, wait_http


@contextlib.contextmanager
def kernel(cwd: Path, env: dict[str, str] | None = None):
    """A python3 kernel started in `cwd`; yields its client, shut down after."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(cwd),
                              env={**os.environ, **(env or {})}, startup_timeout=120)
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def run_cell(kc, code: str, timeout: float = 600) -> tuple[str, list[dict]]:
    """Run `code` as a cell: (its printed text, the rich outputs it displayed). An error
    in the cell fails with the kernel's traceback."""
    text: list[str] = []
    shown: list[dict] = []

    def hook(msg: dict) -> None:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            text.append(content["text"])
        elif kind in ("display_data", "execute_result"):
            shown.append(content["data"])
        elif kind == "error":
            raise AssertionError("\n".join(content["traceback"]))

    reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(text), shown


@contextlib.contextmanager
def jupyter_server(root: Path, base_url: str = "/"):
    """`jupyter server` on 127.0.0.1 under `base_url` (a hub's /user/NAME/), with a token and
    jupyter-server-proxy enabled (it proxies <base_url>proxy/PORT/ to 127.0.0.1:PORT); yields
    (its URL, base included, and the token)."""
    port, token = free_port(), secrets.token_hex(16)
    exe = Path(sys.executable).parent / "jupyter-server"
    log = open(root / "jupyter-server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(exe), "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.open_browser=False", f"--ServerApp.root_dir={root}",
         "--ServerApp.port_retries=0", f"--ServerApp.base_url={base_url}",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        env={**os.environ, "JUPYTER_TOKEN": token, "JUPYTER_RUNTIME_DIR": str(root / ".run")},
        stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}{base_url.rstrip('/')}"
    try:
        wait_http(f"{url}/api/status?token={token}", proc, timeout=60)
        yield url, token
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
        log.close()


@contextlib.contextmanager
def static_files(root: Path):
    """Python's http.server on 127.0.0.1 serving `root`; yields its port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1", "--directory", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc, timeout=30)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
