"""Two-process runs under `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo) for the tests: the launch, and
the end of a launched script."""

import contextlib
import gc
import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    """A port the OS just handed out and released. accelerate's default, 29500, is shared by every launch, and two test
    workers launching at once could both see it free and then collide; ephemeral ports come in random order, so another
    process taking this one before the launch binds it is far less likely."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Seconds a launch may run: the longest two-process test took 18-25 s in runs on a 2-core machine
LAUNCH_TIMEOUT = 300


def launch_two_processes(*program: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Runs `program` (a script and its arguments, or "-m", a module and its arguments) in two CPU processes; its
    output is captured as text. (`--multi_gpu` makes accelerate start them with torch.distributed.run; accelerate
    1.15's `--cpu` starts several CPU processes only through MPI; without it, one.)"""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), *program,
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    with subprocess.Popen(command, env=environment, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as launch:
        try:
            stdout, stderr = launch.communicate(timeout=LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            # SIGTERM, which torchrun's agent passes on to the ranks (each runs in a session of its own, out of reach
            # of a kill of the launcher's group); killed, it would leave them running, slowing every later test.
            launch.terminate()
            try:
                stdout, stderr = launch.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                launch.kill()
                stdout, stderr = launch.communicate()
            raise subprocess.TimeoutExpired(command, LAUNCH_TIMEOUT, output=stdout, stderr=stderr) from None
    return subprocess.CompletedProcess(command, launch.returncode, stdout, stderr)


def end_launched_run() -> None:
    """Ends a launched script's process group while every rank is alive and the interpreter whole. A trainer is freed
    only by the garbage collector (its parts refer to each other), and its DDP wrapper holds the group: destroyed with
    a trainer still uncollected, the group lived on, its gloo threads running into interpreter exit, where a rank that
    finished first sometimes aborted ("terminate called without an active exception", SIGABRT) while the other still
    worked. So: free the trainers (the gloo threads then end with the group), wait for every rank, destroy the group."""
    import torch.distributed

    gc.collect()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    assert not (left := gloo_threads()), f"gloo threads outlived the process group: {left}"


def gloo_threads() -> list[str]:
    """The names of this process's threads that gloo started (Linux; elsewhere none are seen)."""
    names = []
    if os.path.isdir("/proc/self/task"):
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
    return [name for name in names if "gloo" in name]
