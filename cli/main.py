"""The ``gpuq`` command: the root click group; each command lives in its own module.

A command's module is imported only when that command runs (``COMMANDS``): a process runs
one command, and importing them all (the admin commands, the services, their rich tables
and pydantic schemas) cost more than the command itself. ``gpuq --help`` lists the
commands from the same table. Exit codes are listed in ``cli.client``.
"""

from __future__ import annotations

import importlib

import click

from gpuq.cli.client import DEFAULT_TIMEOUT_S, EXIT_INTERRUPTED
from gpuq.cli.context import Env

#: Command name -> ("module:attribute" of its click command, its short help as
#: ``gpuq --help`` lists it: ``command.get_short_help_str(10**6)``, which
#: tests/cli/test_cli_imports.py holds equal).
COMMANDS: dict[str, tuple[str, str]] = {
    "admin": ("gpuq.cli.admin:admin",
              "Manage accounts, users, tokens, nodes, usage history and grants; read the "
              "audit log (uses the admin token: GPUQ_ADMIN_TOKEN, or admin_token in the "
              "config file)."),
    "cancel": ("gpuq.cli.jobs:cancel",
               "Cancel jobs: a pending job ends at once, a running one when its node has "
               "killed it."),
    "eff": ("gpuq.cli.eff:eff",
            "How well a job used what it asked for (like seff): GPUs, memory, time, energy, "
            "carbon, and one suggestion when something was wasted."),
    "logs": ("gpuq.cli.logs:logs",
             "Print a job's output (stdout and stderr, as the job wrote them)."),
    "nodes": ("gpuq.cli.nodes:nodes",
              "Show the GPU nodes, and each GPU: its job, utilisation, memory and power."),
    "q": ("gpuq.cli.jobs:queue",
          "Show the queue: everyone's pending and running jobs (like squeue)."),
    "queue": ("gpuq.cli.jobs:queue",
              "Show the queue: everyone's pending and running jobs (like squeue)."),
    "server": ("gpuq.cli.services:server",
               "Run the scheduler: the API server and the scheduling loop."),
    "share": ("gpuq.cli.fairshare:share", "Show the fair-share tree, like Slurm's sshare -l."),
    "show": ("gpuq.cli.jobs:show", "Show one job in detail, with its history."),
    "sim": ("gpuq.cli.sim:sim",
            "Replay TRACE (CSV: submit_time, user, account, gpus, duration[, time_limit, "
            "gpu_model, name]; times in seconds; gzipped when it ends in .gz), or the trace "
            "that comes with gpuq by its name (lanl-cm5-1994: the LANL CM-5 log on 8-GPU "
            "nodes; try --nodes 2x8), through the scheduling policy on a simulated cluster, "
            "and print the metrics as JSON: GPU utilization, waits, completion time, each "
            "account's share of GPU-time against its fair target over sliding windows, "
            "Jain's fairness index."),
    "submit": ("gpuq.cli.submit:submit", "Submit a batch script, or a command given after --."),
    # The processes of the system: gpuq up / server / worker.
    "up": ("gpuq.cli.services:up",
           "Run the whole system on this machine: API server, scheduling loop and a worker."),
    "usage": ("gpuq.cli.usage_report:usage",
              "GPU-hours, billed hours, kWh, kg CO2e, jobs, mean utilisation and idle "
              "GPU-hours: the table for a grant report."),
    "whoami": ("gpuq.cli.nodes:whoami",
               "Show who the server thinks you are (your token's user, role and accounts)."),
    "why": ("gpuq.cli.why:why",
            "Why a job is waiting: its position in the queue, the reason, its priority "
            "factors beside those of the job ahead of it, and its estimated start (once "
            "backfill planned one)."),
    "worker": ("gpuq.cli.services:worker", "Run the worker daemon of this GPU host."),
}


def load_command(name: str) -> click.Command:
    """The click command ``name`` of ``COMMANDS``, its module imported now."""
    module, _, attr = COMMANDS[name][0].partition(":")
    command: click.Command = getattr(importlib.import_module(module), attr)
    return command


def show_version(ctx: click.Context, value: bool) -> None:
    """``gpuq --version``, as ``click.version_option`` says it (which translates its help
    text when the command is defined: 1 ms of every command, for gettext's locale)."""
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import version

    click.echo(f"gpuq, version {version('gpuq')}", color=ctx.color)
    ctx.exit()


class GpuqGroup(click.Group):
    """The commands of ``COMMANDS``, each imported when it runs; Ctrl-C in any command:
    exit 130 without click's "Aborted!"."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return self.commands.get(cmd_name)
        return load_command(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click lists them, from the short help in ``COMMANDS``: no module imported."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            if name in self.commands:
                rows.append((name, self.commands[name].get_short_help_str(limit)))
            else:
                stub = click.Command(name, help=COMMANDS[name][1])
                rows.append((name, stub.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=GpuqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--server", metavar="URL", help="The scheduler's URL [$GPUQ_SERVER, the config "
              "file, http://127.0.0.1:8642].")
@click.option("--token", metavar="TOKEN", help="The API token [$GPUQ_TOKEN, the config file].")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), envvar="GPUQ_TIMEOUT",
              metavar="SECONDS",
              default=DEFAULT_TIMEOUT_S, show_default=True,
              help="Seconds to wait for the server [$GPUQ_TIMEOUT].")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=lambda ctx, _param, value: show_version(ctx, value),
              help="Show the version and exit.")
@click.pass_context
def cli(ctx: click.Context, server: str | None, token: str | None, timeout_s: float) -> None:
    """gpuq: a fair-share GPU cluster scheduler.

    Configuration: ~/.config/gpuq/config.toml (server, token, admin_token), then
    GPUQ_SERVER / GPUQ_TOKEN / GPUQ_ADMIN_TOKEN, then --server / --token.
    """
    ctx.obj = Env(server=server, token=token, timeout_s=timeout_s)


def main() -> None:
    """The console script ``gpuq``."""
    cli.main(prog_name="gpuq")
