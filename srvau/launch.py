"""How a training or evaluation stage is started: the ``launch`` section of params decides.

``srvau launch sft|grpo|evaluate`` (what dvc.yaml runs, so ``dvc repro``, the Prefect flow and a
deployment all start a stage the same way) reads the stage's effective settings:
``launch.stages.<stage>.num_processes`` / ``.config_file`` where set, else ``launch.num_processes`` /
``launch.config_file``.

* 1 process: the stage runs in the command's own process, no launcher (``srvau launch sft`` is then
  ``srvau sft``).
* N > 1: the process is replaced (exec, so signals and the exit code are the stage's) by
  ``accelerate launch --config_file <cfg> --num_processes N -m srvau.cli <global options> <stage>
  <stage options>``. Every rank gets the same ``--params``/``--recipe``/``--set`` options, so every
  rank reads the same config. ``num_processes`` counts processes over all machines, as accelerate does.

Choices, each for a measured or documented reason:

* Without CUDA the ranks run on CPU with gloo: ``ACCELERATE_USE_CPU=true`` on top of the (MULTI_GPU)
  config file. ``accelerate launch --cpu``, or the variable without a config file, silently starts ONE
  process. The config's ``mixed_precision`` (bf16 for GPUs) is turned off on CPU.
* One machine: ``--main_process_port 0``, so accelerate picks a free port and two runs on one host do
  not collide on its default 29500.
* Several machines: read from torchrun's own environment convention (``PET_NNODES``,
  ``PET_NODE_RANK``, ``PET_MASTER_ADDR``, ``PET_MASTER_PORT``; torchrun reads its options from these
  names too), which Kubeflow's PyTorchJob sets in every pod (infra/k8s/training/pytorchjob-grpo.yaml)
  and any other scheduler can set by hand. The port must be the same on every machine: 29500 unless set.

The stage records the world size it ran with (the trainer's or the process group's, not this file's
wish): ``world_size`` in its summary JSON and the MLflow param ``<stage>.world_size``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from srvau.config import ConfigError, Params

STAGES = ("sft", "grpo", "evaluate")
# torchrun's environment names for its multi-node options (torch.distributed.run reads PET_<OPTION>)
ENV_NUM_MACHINES, ENV_MACHINE_RANK = "PET_NNODES", "PET_NODE_RANK"
ENV_MAIN_IP, ENV_MAIN_PORT = "PET_MASTER_ADDR", "PET_MASTER_PORT"
DEFAULT_MULTINODE_PORT = 29500


@dataclass(frozen=True)
class Machines:
    """Where this launcher sits among the machines of one job (one machine unless the env says more)."""

    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int = 0  # 0 = a free port (one machine only)


@dataclass(frozen=True)
class LaunchPlan:
    stage: str
    num_processes: int
    config_file: Path
    machines: Machines = field(default_factory=Machines)

    @property
    def in_process(self) -> bool:
        return self.num_processes == 1 and self.machines.num_machines == 1


def stage_settings(params: Params, stage: str) -> tuple[int, str, str]:
    """``(num_processes, config_file, key the file came from)``: the stage's override where set."""
    if stage not in STAGES:
        raise ConfigError(f"launch: unknown stage {stage!r} (one of {', '.join(STAGES)})")
    cfg = params.launch
    own = getattr(cfg.stages, stage)
    n = own.num_processes if own.num_processes is not None else cfg.num_processes
    if own.config_file is not None:
        return n, own.config_file, f"launch.stages.{stage}.config_file"
    return n, cfg.config_file, "launch.config_file"


def machines_from_env(env: Mapping[str, str]) -> Machines:
    """The multi-node settings from torchrun's environment names; one machine when they are unset."""

    def integer(name: str, default: int) -> int:
        raw = env.get(name, "").strip()
        if not raw:
            return default
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected an integer (elastic ranges such as 1:2 are not supported)") from None

    n = integer(ENV_NUM_MACHINES, 1)
    if n == 1:
        return Machines()
    rank, ip = integer(ENV_MACHINE_RANK, -1), env.get(ENV_MAIN_IP, "").strip()
    if n < 1 or not 0 <= rank < n:
        raise ConfigError(f"{ENV_NUM_MACHINES}={n}, {ENV_MACHINE_RANK}={env.get(ENV_MACHINE_RANK)!r}: need 0 <= rank < machines")
    if not ip:
        raise ConfigError(f"{ENV_NUM_MACHINES}={n} needs {ENV_MAIN_IP}, the address of machine 0")
    return Machines(n, rank, ip, integer(ENV_MAIN_PORT, DEFAULT_MULTINODE_PORT))


def plan(params: Params, stage: str, env: Mapping[str, str] | None = None) -> LaunchPlan:
    """The validated launch of ``stage``: a missing config file or a process count that does not
    split over the machines fails with the key named."""
    n, config_file, key = stage_settings(params, stage)
    machines = machines_from_env(os.environ if env is None else env)
    path = params.resolve(config_file)
    if (n > 1 or machines.num_machines > 1) and not path.is_file():
        raise ConfigError(f"{key}: {config_file} does not exist (looked for {path})")
    if n % machines.num_machines:
        raise ConfigError(f"launch: {n} processes do not split evenly over {machines.num_machines} machines "
                          f"({ENV_NUM_MACHINES}); set launch.num_processes to a multiple")
    return LaunchPlan(stage, n, path, machines)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def accelerate_command(launch: LaunchPlan, cli_args: list[str], cuda: bool, python: str = sys.executable) -> list[str]:
    """``accelerate launch ... -m srvau.cli <cli_args>`` for a plan of more than one process."""
    m = launch.machines
    cmd = [python, "-m", "accelerate.commands.launch", "--config_file", str(launch.config_file),
           "--num_processes", str(launch.num_processes), "--num_machines", str(m.num_machines),
           "--machine_rank", str(m.machine_rank), "--main_process_port", str(m.main_process_port)]
    if m.main_process_ip:
        cmd += ["--main_process_ip", m.main_process_ip]
    if not cuda:
        cmd += ["--mixed_precision", "no"]  # the configs' bf16 is for GPUs
    return [*cmd, "-m", "srvau.cli", *cli_args]


def accelerate_env(env: Mapping[str, str], cuda: bool) -> dict[str, str]:
    out = dict(env)
    if not cuda:
        out["ACCELERATE_USE_CPU"] = "true"  # a MULTI_GPU config on CPU: gloo ranks (module docstring)
    return out


def global_options(params_file: str | os.PathLike | None, recipe: str | None, overrides: list[str],
                   verbose: bool = False) -> list[str]:
    """The ``srvau`` options every rank needs to read the same config as this launcher."""
    out = ["--params", str(Path(params_file).resolve())] if params_file else []
    if recipe:
        out += ["--recipe", str(recipe)]
    for item in overrides:
        out += ["--set", item]
    return out + (["--verbose"] if verbose else [])


def exec_ranks(launch: LaunchPlan, cli_args: list[str]) -> None:
    """Replace this process by accelerate's launcher (never returns)."""
    import logging

    cuda = cuda_available()
    cmd = accelerate_command(launch, cli_args, cuda)
    logging.getLogger(__name__).info(
        "launching %s on %d processes (%d machine(s), %s, %s): %s", launch.stage, launch.num_processes,
        launch.machines.num_machines, "CUDA" if cuda else "CPU gloo", launch.config_file.name, " ".join(cmd[1:]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(cmd[0], cmd, accelerate_env(os.environ, cuda))
