"""Runs a vidjax command as several processes on this machine, joined by jax.distributed on localhost.

  python -m launch.local --num_processes 2 -- train --config configs/toy.py --workdir runs/toy2

Each process gets `--devices_per_process` CPU devices, the coordinator address and its process id
(VIDJAX_NUM_PROCESSES / VIDJAX_PROCESS_ID, read by `vidjax.parallel.maybe_initialize_distributed`),
so the mesh spans every process and each process's loader reads its own share of the data. This is
how multi-host code paths are exercised without a cluster. SIGTERM is forwarded to every process;
the exit status is the first non-zero status of any process.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_env(index: int, count: int, port: int, devices: int) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
             VIDJAX_NUM_PROCESSES=str(count), VIDJAX_PROCESS_ID=str(index))
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  return env


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1)
  parser.add_argument("command", nargs=argparse.REMAINDER, help="vidjax subcommand and its arguments, after --")
  args = parser.parse_args(argv)
  command = [a for a in args.command if a != "--"] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the vidjax command to run after --, e.g. -- train --config ... --workdir ...")
  port = free_port()
  processes = [subprocess.Popen([sys.executable, "-m", "vidjax.cli", *command],
                                env=process_env(i, args.num_processes, port, args.devices_per_process))
               for i in range(args.num_processes)]
  signal.signal(signal.SIGTERM, lambda *_: [p.send_signal(signal.SIGTERM) for p in processes])
  statuses = [p.wait() for p in processes]
  return next((s for s in statuses if s), 0)


if __name__ == "__main__":
  sys.exit(main())
