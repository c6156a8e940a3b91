"""``edgeattn serve``: the ``tritonserver`` bundled in the nvidia-pytriton wheel, on 127.0.0.1 only, over the
repository ``edgeattn triton`` wrote (its Python-backend entries: that server has no ONNX Runtime or TensorRT
backend). Ctrl-C (or SIGTERM) stops it cleanly.

How it runs (as PyTriton's ``pytriton/triton.py`` does): the wheel's ``backends/`` is copied into a scratch folder
with the Python backend stub for the environment's Python version; ``LD_LIBRARY_PATH`` holds the wheel's
``nvidia_pytriton.libs`` and that Python's ``libpython``; ``PATH`` starts with the environment's ``bin/``, which is how
the stub's embedded Python finds the environment's site-packages. That environment (``.venv/triton-env``, made by
``scripts/setup.sh``) has numpy 1.x: the stub misreads numpy 2 arrays (seen here: [1, 2, 3] arrived as [1, 1, 1]).

    with TritonServer("artifacts/triton", models=["bert_imdb"]) as srv:     # free loopback ports, ready or raises
        print(srv.http_url, srv.grpc_url)
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipeline.args import existing_folder, int_range, models_text, non_negative_int, positive_seconds, stage_parser
from runtime.child import ROOT
from serve.errors import ServerError

log = logging.getLogger("edgeattn.serve.server")

HOST = "127.0.0.1"
DIST_ENV = "EDGEATTN_TRITONSERVER_DIST"  # folder holding pytriton/tritonserver and nvidia_pytriton.libs
PYENV_ENV = "EDGEATTN_TRITON_PYTHON_ENV"  # the Python environment the Python backend's stub runs
DEFAULT_DIST = ROOT / ".venv" / "tritonserver-dist"  # scripts/setup.sh: pip install --no-deps --target
DEFAULT_PYENV = ROOT / ".venv" / "triton-env"  # scripts/setup.sh: numpy<2 + onnxruntime + tokenizers + pillow
SETUP_HINT = "run `make setup` (scripts/setup.sh installs both)"


# ---- what runs ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Distribution:
    """The tritonserver of the nvidia-pytriton wheel: ``root/pytriton/tritonserver`` + ``root/nvidia_pytriton.libs``."""

    root: Path

    @property
    def server(self) -> Path:
        return self.root / "pytriton" / "tritonserver" / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.root / "nvidia_pytriton.libs"

    @property
    def backends(self) -> Path:
        return self.root / "pytriton" / "tritonserver" / "backends"

    def stub(self, version: str) -> Path:
        return self.root / "pytriton" / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"

    def ok(self) -> bool:
        return self.server.is_file() and self.libs.is_dir() and (self.backends / "python").is_dir()


def find_distribution(explicit: str | Path | None = None) -> Distribution:
    """``explicit``, then $EDGEATTN_TRITONSERVER_DIST, then .venv/tritonserver-dist, then an installed pytriton."""
    tried = []
    cands = [explicit, os.environ.get(DIST_ENV), DEFAULT_DIST]
    spec = importlib.util.find_spec("pytriton")  # an installed wheel: site-packages/{pytriton, nvidia_pytriton.libs}
    if spec is not None and spec.origin:
        cands.append(Path(spec.origin).parent.parent)
    for c in cands:
        if not c:
            continue
        d = Distribution(Path(c))
        if d.ok():
            return d
        tried.append(str(c))
    raise ServerError(f"no bundled tritonserver: looked in {tried}; expected the nvidia-pytriton==0.7.0 wheel's "
                      f"pytriton/tritonserver/bin/tritonserver and nvidia_pytriton.libs there: {SETUP_HINT}, or set "
                      f"{DIST_ENV}")


@dataclass(frozen=True)
class PythonEnv:
    """The Python environment of the backend stub: its interpreter, version, libpython folder and numpy."""

    prefix: Path
    version: str  # "3.11"
    libdir: Path
    numpy: str

    @property
    def bin(self) -> Path:
        return self.prefix / "bin"


def find_python_env(explicit: str | Path | None = None, timeout_s: float = 60) -> PythonEnv:
    """``explicit``, then $EDGEATTN_TRITON_PYTHON_ENV, then .venv/triton-env; checked: libpython is there and numpy
    is 1.x (the bundled stub's ABI)."""
    prefix = Path(explicit or os.environ.get(PYENV_ENV) or DEFAULT_PYENV)
    py = prefix / "bin" / "python"
    if not py.exists():
        raise ServerError(f"Python environment for the Python backend: no {py}; expected a venv with numpy<2, "
                          f"onnxruntime, tokenizers and pillow: {SETUP_HINT}, or set {PYENV_ENV}")
    probe = ("import json, sys, sysconfig, numpy; print(json.dumps({'version': '%d.%d' % sys.version_info[:2], "
             "'libdir': sysconfig.get_config_var('LIBDIR'), 'ldlibrary': sysconfig.get_config_var('LDLIBRARY'), "
             "'numpy': numpy.__version__}))")
    try:
        p = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise ServerError(f"{py}: did not answer in {timeout_s:.0f} s") from e
    if p.returncode != 0:
        raise ServerError(f"{py}: cannot import numpy ({p.stderr.strip().splitlines()[-1:]}); expected numpy<2 there: "
                          f"{SETUP_HINT}")
    info = json.loads(p.stdout.strip().splitlines()[-1])
    libpython = Path(info["libdir"] or "") / (info["ldlibrary"] or "")
    if not str(info["ldlibrary"]).endswith(".so") and not libpython.is_file():
        raise ServerError(f"{py}: Python {info['version']} has no shared libpython ({libpython}); the backend stub "
                          "embeds it: expected a Python built with --enable-shared")
    if int(info["numpy"].split(".")[0]) >= 2:
        raise ServerError(f"{py}: numpy {info['numpy']}; expected numpy<2 (the bundled Python backend stub misreads "
                          f"numpy 2 arrays): {SETUP_HINT}")
    return PythonEnv(prefix, info["version"], Path(info["libdir"]), info["numpy"])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_status(url: str, timeout_s: float = 2.0) -> int | None:
    """The HTTP status of GET ``url`` (None: no answer)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return None


# ---- the server ----------------------------------------------------------------------------------------------
class TritonServer:
    """The bundled tritonserver as a child process on 127.0.0.1; ``start`` returns once it and every model in
    ``models`` are ready (ServerError otherwise, with the log's tail), ``stop`` ends it (SIGINT, then SIGKILL to its
    process group after ``exit_timeout_s`` + a grace period). ``models``: loaded explicitly (None: every folder)."""

    def __init__(self, repository: str | Path, models: Sequence[str] | None = None, http_port: int = 0,
                 grpc_port: int = 0, log_path: str | Path | None = None, dist: Distribution | None = None,
                 python_env: PythonEnv | None = None, ready_timeout_s: float = 180.0, exit_timeout_s: int = 10,
                 log_verbose: int = 0):
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise ServerError(f"model repository {self.repository}: no such folder; run `make triton` first")
        self.models = list(models) if models is not None else None
        self.want_http, self.want_grpc = int(http_port), int(grpc_port)
        self.http_port = self.grpc_port = 0
        self.log_path = Path(log_path) if log_path else None
        self.dist = dist or find_distribution()
        self.env = python_env or find_python_env()
        self.ready_timeout_s = float(ready_timeout_s)
        self.exit_timeout_s = int(exit_timeout_s)
        self.log_verbose = int(log_verbose)
        self.proc: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self._log_file = None

    @property
    def http_url(self) -> str:
        return f"{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    # -- set-up --------------------------------------------------------------------------------------------------
    def _backends(self) -> Path:
        """The wheel's backends/ with the stub for the environment's Python (the wheel ships one per version)."""
        stub = self.dist.stub(self.env.version)
        if not stub.is_file():
            have = sorted(p.name for p in stub.parent.parent.iterdir()) if stub.parent.parent.is_dir() else []
            raise ServerError(f"no Python backend stub for Python {self.env.version} in the wheel (it has {have}); "
                              f"expected one matching {self.env.prefix}")
        dst = self.workdir / "backends"
        shutil.copytree(self.dist.backends, dst, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, dst / "python" / "triton_python_backend_stub")
        return dst

    def command(self, backends: Path) -> list[str]:
        cmd = [str(self.dist.server), "--model-repository", str(self.repository), "--backend-directory", str(backends),
               "--http-address", HOST, "--http-port", str(self.http_port), "--grpc-address", HOST,
               "--grpc-port", str(self.grpc_port), "--allow-metrics", "false", "--allow-sagemaker", "false",
               "--allow-vertex-ai", "false", "--exit-timeout-secs", str(self.exit_timeout_s),
               "--log-verbose", str(self.log_verbose), "--strict-readiness", "true"]
        if self.models is not None:
            cmd += ["--model-control-mode", "explicit"]
            for m in self.models:
                cmd += ["--load-model", m]
        return cmd

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join([str(self.dist.libs), str(self.env.libdir)] +
                                                 [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
        env["PATH"] = os.pathsep.join([str(self.env.bin), env.get("PATH", "/usr/bin:/bin")])
        for k in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):  # the stub's Python is the environment's, nothing else
            env.pop(k, None)
        return env

    # -- life cycle ----------------------------------------------------------------------------------------------
    def start(self) -> "TritonServer":
        if self.proc is not None:
            raise ServerError("tritonserver: already started")
        self.workdir = Path(tempfile.mkdtemp(prefix="edgeattn-tritonserver-"))
        try:
            backends = self._backends()
            for attempt in (1, 2):  # free ports are picked, then bound by the server: one retry if one was taken
                self.http_port = self.want_http or free_port()
                self.grpc_port = self.want_grpc or free_port()
                self._launch(backends)
                err = self._wait_ready()
                if err is None:
                    return self
                self.stop(keep_workdir=True)
                if attempt == 1 and not (self.want_http or self.want_grpc) and "address already in use" in err.lower():
                    log.warning("tritonserver: a picked port was taken meanwhile; retrying on new ports")
                    continue
                raise ServerError(err)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, backends: Path) -> None:
        log_path = self.log_path or (self.workdir / "tritonserver.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(log_path, "ab")
        self._log_at = log_path
        cmd = self.command(backends)
        log.info("starting %s", " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.environment(), cwd=str(self.workdir), start_new_session=True)

    def log_tail(self, lines: int = 12) -> str:
        """The server's error lines (glog level E, 'error: ...'; the last 5), then its last ``lines`` lines."""
        try:
            text = Path(self._log_at).read_text(errors="replace")
        except (OSError, AttributeError):
            return ""
        all_lines = text.strip().splitlines()
        errors = [ln for ln in all_lines if ln[:1] == "E" and ln[1:5].isdigit() or ln.startswith("error:")][-5:]
        tail = [ln for ln in all_lines[-lines:] if ln not in errors]
        return "\n".join((["errors:"] + errors + ["last lines:"] if errors else []) + tail)

    def _wait_ready(self) -> str | None:
        """None when the server and every model are ready; else why not (the process is left to ``stop``)."""
        deadline = time.monotonic() + self.ready_timeout_s
        base = f"http://{self.http_url}/v2"
        urls = [f"{base}/health/ready"] + [f"{base}/models/{m}/ready" for m in (self.models or [])]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return (f"tritonserver exited with code {self.proc.returncode} while starting (repository "
                        f"{self.repository}); expected it to serve on {self.http_url}. Log tail:\n{self.log_tail()}")
            if all(http_status(u) == 200 for u in urls):
                log.info("tritonserver ready: HTTP %s, gRPC %s", self.http_url, self.grpc_url)
                return None
            time.sleep(0.25)
        return (f"tritonserver: not ready after {self.ready_timeout_s:.0f} s (waited for {urls}); expected the "
                f"server and its models to load. Log tail:\n{self.log_tail()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, keep_workdir: bool = False) -> int | None:
        """SIGINT (Triton unloads its models and exits), then SIGKILL to its process group; the exit code."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self.proc.send_signal(signal.SIGINT)
                    self.proc.wait(timeout=self.exit_timeout_s + 20)
                except subprocess.TimeoutExpired:
                    log.warning("tritonserver pid %d: still running %d s after SIGINT; killing its process group",
                                self.proc.pid, self.exit_timeout_s + 20)
                    self._kill_group()
            self._kill_group()  # the Python backend's stubs, should one outlive the server
            rc = self.proc.returncode
            self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.workdir is not None and not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        return rc

    def kill(self) -> int | None:
        """SIGKILL the server's process group at once (a server that no longer answers SIGINT), then clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self._kill_group()
        return self.stop()

    def _kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: start_new_session=True
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.error("tritonserver pid %d: did not exit after SIGKILL", self.proc.pid)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def python_entries(repository: str | Path) -> list[str]:
    """The Python-backend entries of a repository ``edgeattn triton`` wrote (what the bundled server can load)."""
    from serve.repository import read_manifest

    return [rec["python"]["entry"] for rec in read_manifest(repository)["models"]]


# ---- edgeattn serve ------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    ap = stage_parser("serve", __doc__)
    ap.add_argument("--repository", type=existing_folder, default="artifacts/triton")
    ap.add_argument("--models", type=models_text, default=None,
                    help="entries to load (default: every Python-backend entry)")
    ap.add_argument("--http-port", type=int_range(0, 65535), default=0, help="0: a free port")
    ap.add_argument("--grpc-port", type=int_range(0, 65535), default=0, help="0: a free port")
    ap.add_argument("--log", default=None, help="server log file (default: <repository>-serve.log)")
    ap.add_argument("--ready-timeout", type=positive_seconds, default=180.0,
                    help="seconds to wait for the server and models")
    ap.add_argument("--log-verbose", type=non_negative_int, default=0)
    a = ap.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    repo = Path(a.repository)
    models = [m.strip() for m in a.models.split(",") if m.strip()] if a.models else python_entries(repo)
    log_path = Path(a.log) if a.log else repo.parent / f"{repo.name}-serve.log"
    srv = TritonServer(repo, models, a.http_port, a.grpc_port, log_path, ready_timeout_s=a.ready_timeout,
                       log_verbose=a.log_verbose)
    # Ctrl-C and SIGTERM stop the server, even where SIGINT came in ignored (a job started with `&` by a script)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        srv.start()
        print(f"serve: {', '.join(models)} on HTTP {srv.http_url} and gRPC {srv.grpc_url} (log {log_path}); Ctrl-C "
              "stops it", flush=True)
        first = models[0]
        what = '--text "a gripping, beautiful film"' if _kind(repo, first) == "text" else "--image FILE.png"
        print(f"  try: python -m serve.client --url {srv.http_url} --model {first} {what}", flush=True)
        while srv.running():
            time.sleep(0.5)
        print(f"serve: tritonserver exited by itself (code {srv.proc.returncode if srv.proc else '?'}); log tail:\n"
              f"{srv.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("serve: stopping tritonserver", flush=True)
        return 0
    finally:
        rc = srv.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if rc is not None:
            print(f"serve: tritonserver stopped (exit code {rc})", flush=True)


def _interrupt(signum, frame) -> None:
    """SIGINT / SIGTERM end `edgeattn serve`: the server is stopped in the finally block."""
    raise KeyboardInterrupt


def _kind(repo: Path, entry: str) -> str:
    from serve.repository import read_manifest

    for rec in read_manifest(repo)["models"]:
        if rec["python"]["entry"] == entry:
            return rec["python"]["kind"]
    return "text"
