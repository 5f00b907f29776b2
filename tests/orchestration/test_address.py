"""``rekd train --address`` against a Ray head this test starts and stops.

The head is ``ray start --head --block`` in its own process group, bound to
127.0.0.1 on free ports, with its own temp dir (so its address file is not
/tmp/ray/ray_current_cluster, where other drivers on this machine would find
it) and its own auth token (so ~/.ray is not touched). It is stopped by
signalling that process group only: never ``ray stop``, which ends every Ray
process on the machine, including other runs and this session's local Ray.
"""

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _head_command(temp_dir: str) -> tuple[list[str], int]:
    gcs, node, objects, agent, agent_grpc, env_agent, metrics = _free_ports(7)
    low = random.randrange(30000, 39000)  # worker ports: a private range
    command = [
        str(RAY), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1", f"--port={gcs}",
        f"--node-manager-port={node}", f"--object-manager-port={objects}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={env_agent}",
        f"--metrics-export-port={metrics}",
        f"--min-worker-port={low}", f"--max-worker-port={low + 200}",
        "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
        f"--object-store-memory={256 * 1024**2}", f"--temp-dir={temp_dir}",
    ]  # fmt: skip
    return command, gcs


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Ray workers run in process groups of
    their own, below the raylet, so the head's group alone misses them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _stop_head(process: subprocess.Popen) -> set[int]:
    """SIGTERM the head's process group, then SIGKILL what is left of the
    processes it started; returns those still alive afterwards."""
    started = _descendants(process.pid)
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):  # the group is gone
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait_s)
            break
    deadline = time.monotonic() + 10  # GCS, raylet, workers exit on SIGTERM
    while any(map(_alive, started)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in filter(_alive, started):
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    return set(filter(_alive, started))


@pytest.fixture
def ray_head():
    # A short temp dir: Ray's Unix socket paths must stay under 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="rkh", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    command, port = _head_command(temp_dir)
    log = open(Path(temp_dir) / "head.log", "w")  # noqa: SIM115
    head = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env,
        start_new_session=True,
    )  # fmt: skip
    address_file = Path(temp_dir) / "ray_current_cluster"
    try:
        deadline = time.monotonic() + 90
        while not address_file.exists():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray head did not start:\n{_tail(temp_dir)}")
            time.sleep(0.5)
        yield {"address": f"127.0.0.1:{port}", "env": env, "temp_dir": temp_dir}
    finally:
        survivors = _stop_head(head)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not survivors, f"processes of the test's head survived: {survivors}"


def _tail(temp_dir: str) -> str:
    return (Path(temp_dir) / "head.log").read_text()[-3000:]


def test_smoke_experiment_runs_on_a_started_head(ray_head, tmp_path):
    completed = subprocess.run(
        [
            sys.executable, "-m", "rekd_ray.cli", "train",
            str(REPO / "experiments" / "smoke.yaml"), "--json",
            "--address", ray_head["address"],
            "--set", "optim.epochs=1",
            "--set", f"runtime.storage_path={tmp_path / 'runs'}",
        ],
        cwd=tmp_path, env=ray_head["env"], capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads(completed.stdout)
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["runtime.use_gpu"] == "False"  # auto, no GPU here
    # The run went to the started head, not to a Ray of its own.
    sessions = list(Path(ray_head["temp_dir"]).glob("session_*/logs"))
    assert sessions and any(
        path.name.startswith("worker") for path in sessions[0].iterdir()
    )
