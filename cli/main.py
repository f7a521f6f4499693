"""The ``gpuq`` command: the root click group; each command lives in its own module.

Exit codes are listed in ``cli.client``.
"""

from __future__ import annotations

import click

from gpuq.cli import services
from gpuq.cli.admin import admin
from gpuq.cli.client import DEFAULT_TIMEOUT_S, EXIT_INTERRUPTED
from gpuq.cli.context import Env
from gpuq.cli.eff import eff
from gpuq.cli.fairshare import share
from gpuq.cli.jobs import cancel, queue, show
from gpuq.cli.logs import logs
from gpuq.cli.nodes import nodes, whoami
from gpuq.cli.sim import sim
from gpuq.cli.submit import submit
from gpuq.cli.usage_report import usage
from gpuq.cli.why import why


class GpuqGroup(click.Group):
    """Ctrl-C in any command: exit 130 without click's "Aborted!"."""

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
@click.version_option(package_name="gpuq", prog_name="gpuq")
@click.pass_context
def cli(ctx: click.Context, server: str | None, token: str | None, timeout_s: float) -> None:
    """gpuq: a fair-share GPU cluster scheduler.

    Configuration: ~/.config/gpuq/config.toml (server, token, admin_token), then
    GPUQ_SERVER / GPUQ_TOKEN / GPUQ_ADMIN_TOKEN, then --server / --token.
    """
    ctx.obj = Env(server=server, token=token, timeout_s=timeout_s)


for _command in (submit, show, eff, usage, why, cancel, logs, nodes, share, whoami, admin,
                 sim):
    cli.add_command(_command)
cli.add_command(queue, "q")
cli.add_command(queue, "queue")

# The processes of the system: gpuq up / server / worker.
for _command in (services.up, services.server, services.worker):
    cli.add_command(_command)


def main() -> None:
    """The console script ``gpuq``."""
    cli.main(prog_name="gpuq")
