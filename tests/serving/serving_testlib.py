"""Constants and helpers shared by the serving tests (imported by conftest.py and the test modules)."""
from __future__ import annotations

MAX_SIDE = 192
LOW_THRESHOLD = 0.012
MAX_DETECTIONS = 5
MAX_IMAGE_PIXELS = 1_000_000
MAX_REQUEST_BYTES = 2 << 20
PHOTOS = {"astronaut": ".jpg", "chelsea": ".png", "coffee": ".jpg"}  # skimage.data, encoded as given


def tiny_config():
    from maskface.config import ContextConfig, FPNConfig, get_config

    cfg = get_config("mbv2")
    cfg.fpn = FPNConfig(channels=64, gn_groups=8)
    cfg.context = ContextConfig(branch1=32, trunk=32, branch2=16, trunk2=48, branch3=16, gn_groups=8)
    cfg.keypoints.conv_channels = 64
    cfg.keypoints.gn_groups = 8
    cfg.keypoints.num_convs = 4
    return cfg


def low_inference():
    from maskface.config import InferenceConfig

    return InferenceConfig(score_threshold=LOW_THRESHOLD, max_detections=MAX_DETECTIONS)


def assert_stopped_cleanly(server, report) -> None:
    """The stop needed no SIGKILL and left no process of the server's group and no shm segment."""
    from maskface.serving.server import _process_group_members

    log = server.log_text(3000)
    assert report.returncode == 0, log
    assert report.clean, f"unclean stop: {report}\n{log}"
    assert _process_group_members(server.last_pgid) == []
    assert server.shm_segments() == []


class ServeCommand:
    """`maskface serve ...` as a subprocess for a `with` block: waits for its `serve: ready` line
    (http_url, grpc_url, pid of tritonserver), stops it with SIGINT on exit and keeps its output
    (`text`, `returncode`) for the assertions after the block."""

    READY = r"serve: ready\s+http=(\S+)\s+grpc=(\S+).*pid=(\d+)"

    def __init__(self, command: list[str], ready_timeout: float = 240, **popen):
        self.command, self.ready_timeout, self.popen = command, ready_timeout, popen
        self.output: list[str] = []
        self.http_url = self.grpc_url = None
        self.server_pid: int | None = None
        self.returncode: int | None = None

    @property
    def text(self) -> str:
        return "".join(self.output)

    def __enter__(self) -> "ServeCommand":
        import queue
        import re
        import subprocess
        import threading
        import time

        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     **self.popen)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        ready, deadline = None, time.monotonic() + self.ready_timeout
        try:
            while ready is None and time.monotonic() < deadline:
                try:
                    line = self.lines.get(timeout=1)
                except queue.Empty:
                    continue
                if line is None:
                    break
                self.output.append(line)
                ready = re.search(self.READY, line)
            assert ready, self.text
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.http_url, self.grpc_url, self.server_pid = ready.group(1), ready.group(2), int(ready.group(3))
        return self

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def __exit__(self, *exc) -> None:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        while True:
            line = self.lines.get(timeout=10)
            if line is None:
                break
            self.output.append(line)
        self.returncode = self.proc.returncode
