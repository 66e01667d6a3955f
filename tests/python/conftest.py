"""Shared fixtures: one rkserve process for the whole session, on a free port.

The server is the release binary at target/release/rkserve, serving the workspace's
models/ directory (the default model, SmolLM2-135M-Instruct, on the CPU runtime).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "target" / "release" / "rkserve"
MODELS = ROOT / "models"
LOG = ROOT / "target" / "python-tests-rkserve.log"
MODEL = "smollm2-135m-instruct"
# models/synthetic/scripted-tools.toml: scripted replies that think and call get_weather.
# It is served under its file stem, not the `[model] name` inside the profile.
SCRIPTED_MODEL = "scripted-tools"
READY_TIMEOUT = 120.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = re.sub(r"\x1b\[[0-9;]*m", "", path.read_text(errors="replace"))
        return "\n".join(text.splitlines()[-lines:])
    except OSError as e:
        return f"(cannot read {path}: {e})"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="session")
def model() -> str:
    return MODEL


@pytest.fixture(scope="session")
def scripted_model() -> str:
    return SCRIPTED_MODEL


@pytest.fixture(scope="session")
def server_url():
    """Starts rkserve, waits for GET /ready to answer 200, yields its base URL."""
    if not BINARY.is_file():
        pytest.exit(f"{BINARY} is missing: run cargo build --release", returncode=2)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # Only our flags count: RKSERVE_* from the caller's environment would override them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RKSERVE_")}
    env.setdefault("RUST_LOG", "info")
    LOG.parent.mkdir(parents=True, exist_ok=True)
    log = open(LOG, "wb")
    # Prompt-cache files in a directory of this session's, not in models/: a file left by an
    # earlier run would change what the next one measures.
    scratch = Path(tempfile.mkdtemp(prefix="rkserve-pytest-"))
    config = scratch / "rkserve.toml"
    config.write_text(f"[prompt_cache]\ndir = {json.dumps(str(scratch / 'prompt-cache'))}\n")
    proc = subprocess.Popen(
        [str(BINARY), "--port", str(port), "--models-dir", str(MODELS), "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not _ready(url):
            # pytest.exit ends the session with one message instead of an error per test.
            if proc.poll() is not None:
                pytest.exit(
                    f"rkserve exited with status {proc.returncode} before it was ready; "
                    f"last lines of {LOG}:\n{_tail(LOG)}",
                    returncode=1,
                )
            if time.monotonic() > deadline:
                pytest.exit(
                    f"rkserve was not ready within {READY_TIMEOUT:.0f}s; "
                    f"last lines of {LOG}:\n{_tail(LOG)}",
                    returncode=1,
                )
            time.sleep(0.25)
        yield url
    finally:
        _stop(proc)
        log.close()
        shutil.rmtree(scratch, ignore_errors=True)
