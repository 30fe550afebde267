"""Secrets never leave the process: a URL with credentials in any URL-valued config key is
refused before a run exists, tracking URIs with passwords are masked in every message, the
app's token never reaches a log, and a bad token file is a clear error, not a traceback.
Each case asserts on what a user sees (the message, the terminal, the store, the logs)."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hyrax_mlops as hm
from hyrax_mlops.errors import ConfigError, HyraxError
from hyrax_mlops.redact import has_userinfo, redact

from servers import free_port, stop, wait_http

SECRET = "Pw-h0stile-s3cret"
EXE = Path(sys.executable).parent / "hyrax-mlops"

# ------------------------------------------------------------------ URL-valued config keys
# key -> what the message must name as the credentials' home (an env var or a file)
URL_KEYS = {
    "download.hsc.url": "HSC_SSP_CAS_PASSWORD",
    "download.rubin.url": "RSP_TOKEN",
    "download.rubin.butler_repo": "DAF_BUTLER_REPOSITORY_INDEX",
    "index.url": "CHROMA_TOKEN",
    "ray.address": "RAY_AUTH_TOKEN",
    "analyse.reference": "environment variable",
}
URL_SHAPES = {
    "user-password": f"https://alice:{SECRET}@example.org/api",
    "token-as-user": f"http://{SECRET}@127.0.0.1:8000",
    "at-in-password": f"https://bob:{SECRET}@x@example.org:8443/p",
}


@pytest.fixture(scope="module")
def one_store(tmp_path_factory):
    """One tracking store for the refusals (none of them may write to it)."""
    from conftest import in_store

    with in_store(tmp_path_factory.mktemp("refusals")) as d:
        yield d


def all_store_text() -> str:
    """Every param, tag and metric key/value of every run in the current store."""
    import mlflow

    out = []
    for exp in mlflow.search_experiments():
        for run in mlflow.MlflowClient().search_runs([exp.experiment_id]):
            out += [f"{k}={v}" for k, v in {**run.data.params, **run.data.tags}.items()]
    return "\n".join(out)


@pytest.mark.parametrize("shape", sorted(URL_SHAPES))
@pytest.mark.parametrize("key", sorted(URL_KEYS))
def test_credentials_in_a_url_key_are_refused_naming_the_key_and_where_they_belong(
        key, shape, one_store):
    url = URL_SHAPES[shape]
    with pytest.raises(ConfigError) as err:
        hm.load_config(None, {key: url})
    message = str(err.value)
    assert f"config key '{key}'" in message and "must not hold credentials" in message
    assert URL_KEYS[key] in message
    assert SECRET not in message and "alice" not in message
    assert SECRET not in all_store_text()  # refused before any run could record it


# ------------------------------------------------------------------ redact() on URI shapes
REDACT_CASES = {
    "http user:pass": (f"http://user:{SECRET}@127.0.0.1:5000", "127.0.0.1:5000"),
    "https token user": (f"https://{SECRET}@mlflow.example.org", "mlflow.example.org"),
    "postgresql": (f"postgresql://u:{SECRET}@db.example.org/mlflow", "db.example.org/mlflow"),
    "postgresql+psycopg2": (f"postgresql+psycopg2://u:{SECRET}@db:5432/m", "db:5432/m"),
    "mysql percent-encoded": (f"mysql://root:{SECRET}%40x@h/db", "h/db"),
    "redis password only": (f"redis://:{SECRET}@cache:6379/0", "cache:6379/0"),
    "at in password": (f"http://u:{SECRET}@evil@host:5000/x", "host:5000/x"),
    "slash in password": (f"http://u:ab/{SECRET}@host:5000/x", "host:5000/x"),
    "ipv6 host": (f"http://u:{SECRET}@[::1]:5000/", "[::1]:5000"),
    "upper-case scheme": (f"HTTPS://U:{SECRET}@HOST/", "HOST/"),
    "s3 keys": (f"s3://AKIAX:{SECRET}@bucket/prefix", "bucket/prefix"),
    "quoted in a sentence": (f"run 'x' does not exist in 'http://a:{SECRET}@h:1'. Fix: ...",
                             "does not exist in"),
    "query token": (f"http://h/api?token={SECRET}&x=1", "x=1"),
    "query access_token": (f"https://h/p?a=1&access_token={SECRET}", "a=1"),
    "fragment access_token": (f"https://h/cb#access_token={SECRET}", "https://h/cb"),
    "query password mixed case": (f"http://h/?PassWord={SECRET}", "http://h/"),
    "presigned s3": (f"https://b.s3/k?X-Amz-Credential=AK/x&X-Amz-Signature={SECRET}",
                     "https://b.s3/k"),
    "azure sas sig": (f"https://acct.blob/c?sv=2020&sig={SECRET}", "sv=2020"),
    "libpq keywords": (f"host=db user=u password={SECRET} dbname=m", "dbname=m"),
    "bearer header": (f"Authorization: Bearer {SECRET}", "Authorization"),
    "werkzeug request line": (f'"GET /?token={SECRET} HTTP/1.1" 302 -', "HTTP/1.1"),
    "two urls in one text": (f"http://a:{SECRET}@h1 and http://b:{SECRET}@h2", "h2"),
}


@pytest.mark.parametrize("case", sorted(REDACT_CASES))
def test_redact_masks_the_secret_and_keeps_the_rest(case):
    text, kept = REDACT_CASES[case]
    clean = redact(text)
    assert SECRET not in clean and "***" in clean
    assert kept in clean
    assert redact(clean) == clean  # idempotent


@pytest.mark.parametrize("text", ["sqlite:////tmp/mlflow.db", "http://127.0.0.1:5000",
                                  "http://host:5000/a@b", "file:///data/x.parquet",
                                  "a token is required (open ?token=<token>)"])
def test_redact_leaves_harmless_text_alone(text):
    assert redact(text) == text
    assert not has_userinfo(text)


def test_say_masks_what_it_prints(capfd):
    from hyrax_mlops.tracking import say

    say(f"reading http://alice:{SECRET}@127.0.0.1:5000 with ?token={SECRET}")
    err = capfd.readouterr().err
    assert SECRET not in err and "http://***@127.0.0.1:5000" in err


# ------------------------------------------------------------ a real message: the store
@contextlib.contextmanager
def mlflow_server(tmp: Path):
    """`mlflow server` on a loopback port (no auth: it ignores the user:password given)."""
    port = free_port()
    exe = Path(sys.executable).parent / "mlflow"
    log = open(tmp / "mlflow-server.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([str(exe), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
                             "--default-artifact-root", str(tmp / "art"), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:  # up in seconds without the job runner (tens of seconds with it)
        wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=90)
        yield port
    finally:
        stop(proc)
        log.close()


def _cli(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    full.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5", **env)
    return subprocess.run([str(EXE), *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=120)


def test_a_tracking_uri_password_never_shows_in_error_messages(tmp_path, monkeypatch):
    import mlflow

    from hyrax_mlops.errors import LineageError
    from hyrax_mlops.tracking import get_run

    missing = "0" * 32
    with mlflow_server(tmp_path) as port:
        uri = f"http://alice:{SECRET}@127.0.0.1:{port}"
        done = _cli(["search", "--run", missing, "--id", "X"], tmp_path,
                    MLFLOW_TRACKING_URI=uri)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"does not exist in http://***@127.0.0.1:{port}" in done.stderr
    assert SECRET not in done.stderr + done.stdout and "Traceback" not in done.stderr
    # the store not answering at all: a different message, just as clean
    closed = free_port()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"http://alice:{SECRET}@127.0.0.1:{closed}")
    try:
        with pytest.raises(LineageError) as err:
            get_run(missing)
    finally:
        mlflow.set_tracking_uri(old)
    message = str(err.value)
    assert message.startswith(f"cannot read run '{missing}' from http://***@127.0.0.1:{closed}")
    assert "Fix:" in message and SECRET not in message


def test_next_steps_print_the_store_without_its_password(monkeypatch):
    from hyrax_mlops.cli import _next_steps

    class Stage:
        run_id = "abc123"

    class Result:
        run_id = "pipe1"

        def __getitem__(self, name):
            return Stage()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://bob:{SECRET}@mlflow.example.org")
    text = _next_steps(Result())
    assert SECRET not in text and "https://***@mlflow.example.org" in text


# --------------------------------------------------------------------- the app's token
APP_TOKENS = ["plain-token-123456", "with+plus/slash=", "semi;colon", "per%25cent",
              "x" * 200]


@pytest.mark.parametrize("token", APP_TOKENS)
def test_server_log_records_never_carry_the_token(token):
    """What Werkzeug/waitress would log for a request line, through the app's filter."""
    from urllib.parse import quote

    from dash_app.server import quiet_logs

    quiet_logs()
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    for name in ("werkzeug", "waitress"):
        log = logging.getLogger(name)
        handler = Keep()
        log.addHandler(handler)
        old = log.level
        log.setLevel(logging.INFO)
        try:
            log.error('127.0.0.1 - - "GET /?token=%s&tab=x HTTP/1.1" 302 -', quote(token))
            log.error("bad request for /?a=1&token=%s", token)
        finally:
            log.removeHandler(handler)
            log.setLevel(old)
    assert len(records) == 4
    assert all(token not in r and quote(token) not in r for r in records)
    assert all("token=***" in r for r in records)


# ------------------------------------------------------------------ bad token files
def _token_file(tmp: Path, kind: str) -> Path:
    path = tmp / f"token-{kind}"
    if kind == "missing":
        return path
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_text("")
    elif kind == "blank-lines":
        path.write_text("\n  \n\t\n")
    elif kind == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" + SECRET.encode())
    elif kind == "nul-inside":
        path.write_bytes(SECRET.encode() + b"\x00tail")
    elif kind == "two-words":
        path.write_text(f"{SECRET} second-line\n")
    return path


BAD_FILES = {"missing": "no such file", "directory": "is a directory",
             "empty": "is empty", "blank-lines": "is empty",
             "binary": "is not text", "nul-inside": "holds more than one word, or control",
             "two-words": "holds more than one word"}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_bad_token_file_is_a_clear_error_before_anything_starts(kind, tmp_path):
    from dash_app.server import read_token, serve

    path = _token_file(tmp_path, kind)
    with pytest.raises(ConfigError) as err:
        read_token(str(path))
    message = str(err.value)
    assert message.startswith(f"--token-file {path}: {BAD_FILES[kind]}")
    assert "Fix:" in message and "HYRAX_APP_TOKEN" in message
    assert SECRET not in message and "second-line" not in message
    with pytest.raises(ConfigError):  # serve() stops there: nothing is built or bound
        serve("0.0.0.0", 1, str(path))


def test_the_cli_reports_a_bad_token_file_without_a_traceback(tmp_path):
    path = _token_file(tmp_path, "binary")
    done = _cli(["app", "--host", "0.0.0.0", "--port", "1", "--token-file", str(path)],
                tmp_path, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert done.returncode == 2
    assert f"error: --token-file {path}: is not text" in done.stderr
    assert "Traceback" not in done.stderr and SECRET not in done.stderr + done.stdout


def test_a_good_token_file_is_read_and_stripped(tmp_path):
    from dash_app.server import read_token

    path = tmp_path / "tok"
    path.write_text(f"  {SECRET}\n")
    assert read_token(str(path)) == SECRET
    assert issubclass(ConfigError, HyraxError)
