"""Launch and stop a real `tritonserver` on a rendered model repository.

    with TritonServer("runs/triton_repo") as server:       # free loopback ports, waits until ready
        print(server.http_url, server.grpc_url)
    # stopped: no process of its group and no Python-backend shared-memory segment left

Which binary: `binary=` / $MASKFACE_TRITONSERVER, else a system `tritonserver` (PATH or
/opt/tritonserver/bin, with its own backends), else the one bundled in nvidia-pytriton. The bundled
one needs a backend folder holding the wheel's Python backend and the stub for this interpreter,
LD_LIBRARY_PATH with libpython and nvidia_pytriton.libs, and this environment's bin first on PATH
(the stub finds its site-packages through `python3`); this module arranges all of that
(docs/ARCHITECTURE.md §6).

Health: Triton keeps answering ready after a Python-backend stub dies (every request then fails
with "Stub process ... is not healthy"), so `dead_stages()` watches the stubs themselves and the
log; `maskface serve` stops the server and exits non-zero when one dies (an orchestrator restarts
it). The server gets SIGTERM when the launching process dies (PR_SET_PDEATHSIG), so it never
outlives its supervisor. Admin APIs are restricted to callers sending the admin key header.
"""
from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .repository import ENSEMBLE, read_manifest

LOOPBACK = "127.0.0.1"
BINARY_ENV = "MASKFACE_TRITONSERVER"
SYSTEM_BINARIES = ("/opt/tritonserver/bin/tritonserver",)
SHM_DIR = Path("/dev/shm")
STUB_NAME = "triton_python_backend_stub"
# The backend's own verdict on a stub that died or stopped answering (logged per failed request).
UNHEALTHY_STUB = "is not healthy"
ADMIN_HEADER = "maskface-admin-key"
# Open to every client: health, metadata and inference. Needs the admin key header: the rest
# (log settings, shared-memory registration, model load/unload, tracing, statistics).
RESTRICTED_APIS = ("shared-memory", "model-repository", "statistics", "trace", "logging")
PR_SET_PDEATHSIG = 1


def _parent_death_signal():
    """A preexec_fn giving the child SIGTERM (a graceful stop) when its launcher dies, kill -9
    included; None where prctl is missing. libc is bound here, before the fork: the child only
    makes the call. Linux sends it when the launching *thread* exits, so launch from a thread
    that lives as long as the server (the main thread in `maskface serve`)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the launcher's own cleanup is all there is
        return None
    return lambda: prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


class ServerError(RuntimeError):
    """tritonserver could not be started (the message ends with the tail of its log)."""


@dataclass
class TritonInstall:
    binary: Path
    bundled: bool  # nvidia-pytriton's copy (needs the backend folder and environment set up here)
    backends_source: Path | None = None  # bundled: pytriton/tritonserver
    libs_dir: Path | None = None  # bundled: site-packages/nvidia_pytriton.libs


def find_tritonserver(binary: str | os.PathLike | None = None) -> TritonInstall:
    """An explicit binary, else a system install, else the one bundled in nvidia-pytriton."""
    explicit = binary or os.environ.get(BINARY_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ServerError(f"tritonserver binary {path} not found")
        return _as_install(path)
    for candidate in (shutil.which("tritonserver"), *SYSTEM_BINARIES):
        if candidate and Path(candidate).is_file():
            return _as_install(Path(candidate))
    try:
        import pytriton
    except ImportError:
        raise ServerError("no tritonserver found: install nvidia-pytriton (pip install 'maskface[serving]'), "
                          f"put tritonserver on PATH, or set ${BINARY_ENV}") from None
    root = Path(pytriton.__file__).resolve().parent / "tritonserver"
    path = root / "bin" / "tritonserver"
    if not path.is_file():
        raise ServerError(f"nvidia-pytriton has no bundled tritonserver at {path}")
    return _as_install(path)


def _as_install(path: Path) -> TritonInstall:
    path = path.resolve()
    root = path.parents[1]
    if (root / "python_backend_stubs").is_dir() and (root / "backends" / "python").is_dir():
        libs = root.parents[1] / "nvidia_pytriton.libs"
        return TritonInstall(path, True, root, libs if libs.is_dir() else None)
    return TritonInstall(path, False)


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct ports the OS reports free on host right now."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def _process_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def process_group_rss_mb(pgid: int) -> float:
    """Resident memory (MB) of every live process of a process group: the server and its stubs."""
    total_kb = 0
    for pid in _process_group_members(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:  # the process ended meanwhile
            pass
    return total_kb / 1024


def _stub_models(pgid: int) -> dict[int, str]:
    """pid -> model name of the live Python-backend stubs of a process group (argv[1] is the
    model's <repo>/<model>/<version>/model.py)."""
    stubs = {}
    for pid in _process_group_members(pgid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(STUB_NAME.encode()) and len(argv) > 1:
            stubs[pid] = Path(argv[1].decode(errors="replace")).parents[1].name
    return stubs


@dataclass
class StopReport:
    returncode: int | None
    forced: bool = False  # SIGKILL was needed
    leftover_processes: list[int] = field(default_factory=list)  # found (and killed) after the server exited
    leftover_shm: list[str] = field(default_factory=list)  # found (and removed) after the server exited

    @property
    def clean(self) -> bool:
        return not self.forced and not self.leftover_processes and not self.leftover_shm


class TritonServer:
    """One tritonserver process bound to 127.0.0.1 on free ports (or the ones given)."""

    def __init__(
        self,
        repository: str | os.PathLike,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,  # None: metrics off
        host: str = LOOPBACK,
        binary: str | os.PathLike | None = None,
        backend_config: Sequence[str] = (),  # "backend,key=value" entries
        plugins: Sequence[str | os.PathLike] = (),  # TensorRT plugin libraries
        extra_args: Sequence[str] = (),
        ready_timeout: float = 120.0,
        exit_timeout: float = 30.0,
        shm_default_bytes: int = 8 << 20,
        shm_growth_bytes: int = 16 << 20,
        log_verbose: int = 0,
        work_dir: str | os.PathLike | None = None,
        admin_key: str | None = None,  # None: a random one (see .admin_headers)
        restricted_apis: Sequence[str] = RESTRICTED_APIS,
        dead_stage_grace: float = 2.0,  # SIGTERM grace when a stage is dead (Triton would wait exit_timeout)
    ):
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise ServerError(f"model repository {self.repository} not found (render it first)")
        self.host = host
        self._requested_ports = (http_port, grpc_port, metrics_port)
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.install = find_tritonserver(binary)
        self.backend_config = list(backend_config)
        self.plugins = [str(Path(p).resolve()) for p in plugins]
        self.extra_args = list(extra_args)
        self.ready_timeout = ready_timeout
        self.exit_timeout = exit_timeout
        self.shm_default_bytes = shm_default_bytes
        self.shm_growth_bytes = shm_growth_bytes
        self.log_verbose = log_verbose
        # Short and unique: the Python backend names its regions <prefix><model>_<instance>...
        self.shm_prefix = f"maskface{os.getpid()}{uuid.uuid4().hex[:8]}_"
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="maskface-triton-"))
        self.log_path = self.work_dir / "tritonserver.log"
        self.process: subprocess.Popen | None = None
        self.last_pgid: int | None = None  # process group of the latest launch (the server leads it)
        self._log_file = None
        self.last_stop: StopReport | None = None
        self.admin_key = admin_key or secrets.token_urlsafe(24)
        self.restricted_apis = tuple(restricted_apis)
        self.dead_stage_grace = dead_stage_grace
        self._stubs: dict[int, str] = {}  # the stubs seen when the server became ready
        self._log_offset = 0

    # ------------------------------------------------------------------ properties

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def admin_headers(self) -> dict[str, str]:
        """Headers that open the restricted APIs (statistics, logging, ...) to this caller."""
        return {ADMIN_HEADER: self.admin_key}

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self, tail: int | None = None) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-tail:] if tail else text

    def shm_segments(self) -> list[str]:
        try:
            return sorted(p.name for p in SHM_DIR.iterdir() if p.name.startswith(self.shm_prefix))
        except OSError:
            return []

    # ------------------------------------------------------------------ command line

    def _backend_dir(self) -> Path | None:
        """The bundled server's backend folder: python/ with the backend, its utils and our stub."""
        if not self.install.bundled:
            return None
        src = self.install.backends_source
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = src / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {version} ({stub})")
        dst = self.work_dir / "backends" / "python"
        dst.mkdir(parents=True, exist_ok=True)
        for f in (src / "backends" / "python" / "libtriton_python.so",
                  src / "backends" / "python" / "triton_python_backend_utils.py", stub):
            if not (dst / f.name).is_file():  # copied once; a running server keeps them open
                shutil.copy2(f, dst / f.name)
        return dst.parent

    def command(self) -> list[str]:
        manifest = read_manifest(self.repository) or {}
        args = [
            str(self.install.binary),
            f"--model-repository={self.repository}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            "--disable-auto-complete-config",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            f"--exit-timeout-secs={int(self.exit_timeout)}",
            f"--log-verbose={self.log_verbose}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--backend-config=python,shm-default-byte-size={self.shm_default_bytes}",
            f"--backend-config=python,shm-growth-byte-size={self.shm_growth_bytes}",
        ]
        if self.restricted_apis:
            apis = ",".join(self.restricted_apis)
            args += [f"--http-restricted-api={apis}:{ADMIN_HEADER}={self.admin_key}",
                     f"--grpc-restricted-protocol={apis}:{ADMIN_HEADER}={self.admin_key}"]
        if self.metrics_port is None:
            args.append("--allow-metrics=false")
        else:
            args += ["--allow-metrics=true", f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}"]
        backend_dir = self._backend_dir()
        if backend_dir is not None:
            args.append(f"--backend-directory={backend_dir}")
        if self.plugins:
            args.append("--backend-config=tensorrt,plugins=" + ";".join(self.plugins))
        for entry in self.backend_config:
            args.append(f"--backend-config={entry}")
        for arg in manifest.get("server_args", []):
            if not (self.plugins and arg.startswith("--backend-config=tensorrt,plugins=")):
                args.append(arg)
        return args + self.extra_args

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # A second line behind the header checks of maskface_preprocess: OpenCV refuses to
        # allocate more pixels than the library ever accepts.
        from ..preprocess import MAX_INPUT_PIXELS

        env["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(MAX_INPUT_PIXELS)
        # Large request buffers (up to the body size) go back to the OS when freed instead of
        # staying in the heap: a fixed mmap threshold stops glibc from raising it after each one.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
        # The Python stages import the maskface that launched them (an installed wheel or a checkout):
        # its parent folder goes first on the stubs' PYTHONPATH.
        import maskface

        package_parent = str(Path(maskface.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([package_parent, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        if self.install.bundled:
            libs = [sysconfig.get_config_var("LIBDIR") or "", str(self.install.libs_dir or "")]
            paths = [p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]
            env["LD_LIBRARY_PATH"] = os.pathsep.join(paths).rstrip(os.pathsep)
            env["PATH"] = os.pathsep.join([str(Path(sys.prefix) / "bin"), env.get("PATH", "")])
        return env

    # ------------------------------------------------------------------ lifecycle

    def start(self, attempts: int = 3) -> "TritonServer":
        """Start and wait until the server and the ensemble are ready; kill it on timeout/failure."""
        if self.is_running():
            return self
        last: Exception | None = None
        for _ in range(max(1, attempts)):
            http, grpc, metrics = self._requested_ports
            ports = iter(free_ports(3, self.host))
            self.http_port = http or next(ports)
            self.grpc_port = grpc or next(ports)
            self.metrics_port = metrics
            try:
                self._launch()
                self._wait_ready()
                return self
            except ServerError as exc:
                last = exc
                log = self.log_text()
                self._terminate(force=True)
                # A port taken between our probe and the server's bind: retry with fresh ones.
                if "address already in use" not in log.lower() or any(self._requested_ports[:2]):
                    break
        raise last  # type: ignore[misc]

    def _launch(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command(), stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.environment(), start_new_session=True, cwd=str(self.work_dir),
            preexec_fn=_parent_death_signal(),
        )
        self.last_pgid = self.process.pid
        self._stubs = {}
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0

    def _get(self, path: str, timeout: float = 2.0) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=timeout) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return 0

    def is_ready(self) -> bool:
        """Triton's readiness AND every Python-backend stage alive (Triton alone keeps saying ready)."""
        return (self.is_running() and self._get("/v2/health/ready") == 200
                and self._get(f"/v2/models/{ENSEMBLE}/ready") == 200 and not self.dead_stages())

    def dead_stages(self) -> list[str]:
        """Why a stage is dead or failing, one line each ([] when all is well): a stub seen at
        start-up that is gone, or the backend logging one as not healthy since the last call."""
        if not self.is_running():
            return []
        return self.dead_stubs() + self._unhealthy_in_log()

    def dead_stubs(self) -> list[str]:
        """The stubs seen at start-up that are gone (reads /proc only: safe from any thread)."""
        process = self.process
        if process is None:
            return []
        alive = _stub_models(process.pid)
        if not self._stubs:
            self._stubs = dict(alive)  # the first look after start-up: the stubs to watch
        return [f"stage {model}: its Python-backend stub (pid {pid}) died"
                for pid, model in self._stubs.items() if pid not in alive]

    def _unhealthy_in_log(self) -> list[str]:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                chunk = f.read()
        except OSError:
            return []
        complete = chunk.rfind(b"\n") + 1  # keep a partial last line for the next call
        self._log_offset += complete
        return sorted({line.strip() for line in chunk[:complete].decode(errors="replace").splitlines()
                       if UNHEALTHY_STUB in line})

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if not self.is_running():
                raise ServerError(f"tritonserver exited with code {self.process.returncode} while starting:\n"
                                  f"{self.log_text(4000)}")
            if self.is_ready():
                self._stubs = _stub_models(self.process.pid)
                return
            time.sleep(0.2)
        raise ServerError(f"tritonserver not ready after {self.ready_timeout:.0f} s (killed):\n{self.log_text(4000)}")

    def _terminate(self, force: bool = False, grace: float | None = None) -> StopReport:
        report = StopReport(returncode=None)
        proc = self.process
        if proc is not None:
            pgid = proc.pid  # start_new_session: the server leads its own group
            if proc.poll() is None and not force:
                proc.send_signal(signal.SIGTERM)  # graceful: unload models, stubs exit, shm released
                try:
                    proc.wait(timeout=self.exit_timeout + 15 if grace is None else grace)
                except subprocess.TimeoutExpired:
                    report.forced = True
            if proc.poll() is None:
                report.forced = report.forced or not force
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=30)
            report.returncode = proc.returncode
            # The stubs leave with the server; give them a moment, then kill stragglers.
            deadline = time.monotonic() + 10
            members = _process_group_members(pgid)
            while members and time.monotonic() < deadline:
                time.sleep(0.1)
                members = _process_group_members(pgid)
            if members:
                report.leftover_processes = members
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        leftovers = self.shm_segments()
        for name in leftovers:
            try:
                (SHM_DIR / name).unlink()
            except OSError:
                pass
        report.leftover_shm = leftovers
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self.process = None
        return report

    def stop(self, grace: float | None = None) -> StopReport:
        """SIGTERM, wait for a clean exit (SIGKILL the group after `grace`, default exit_timeout +
        15 s), then make sure no process of the group and no shared-memory segment with our prefix
        is left. With a dead stage, pass a short grace: Triton would wait its whole exit timeout
        for the dead stub's model to unload."""
        self.last_stop = self._terminate(grace=grace)
        if self._own_work_dir:
            backends = self.work_dir / "backends"
            shutil.rmtree(backends, ignore_errors=True)
        return self.last_stop

    def cleanup(self) -> None:
        """Remove the work folder (log included)."""
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.stop().clean:  # keep the log (work_dir) only when something went wrong
            self.cleanup()

    def describe(self) -> str:
        return json.dumps({"http": self.http_url, "grpc": self.grpc_url, "pid": self.pid,
                           "binary": str(self.install.binary), "bundled": self.install.bundled,
                           "repository": str(self.repository), "log": str(self.log_path)})
