"""``gpuq submit``: a batch script (with ``#GPUQ`` lines) or a command after ``--``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from gpuq.cli.client import EXIT_USAGE, CliError
from gpuq.cli.context import Env, echo_json, pass_env
from gpuq.cli.export import export_environment
from gpuq.cli.script import directive_lines, script_with_args
from gpuq.cli.units import MemoryType, TimeType
from gpuq.cli.vocab import QOS_NAMES

_COMMAND_FORM = "gpuq.submit.command_form"
#: Options that go into the request body as they are (None: not given, server default).
_SPEC_KEYS = ("name", "gpus", "gpu_model", "cpus", "memory_mib", "time_limit_s", "account",
              "requeue", "nice", "qos")


class SubmitCommand(click.Command):
    """Notes whether the words to run came after ``--`` (a command) or not (a script)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        original = list(args)
        rest = super().parse_args(ctx, args)
        n = len(ctx.params.get("args") or ())
        ctx.meta[_COMMAND_FORM] = len(original) > n and original[-n - 1] == "--"
        return rest


def directive_options(command: click.Command, text: str) -> list[tuple[str, Any]]:
    """``(option name, value)`` set by each ``#GPUQ`` line of ``text``, in file order."""
    try:
        lines = directive_lines(text)
    except ValueError as e:
        raise CliError(f"#GPUQ {e}", EXIT_USAGE) from e
    out: list[tuple[str, Any]] = []
    for number, tokens in lines:
        try:
            with command.make_context("#GPUQ", list(tokens)) as sub:
                if sub.params.get("args"):
                    raise click.UsageError(f"unexpected argument {sub.params['args'][0]!r}")
                out += [(name, value) for name, value in sub.params.items()
                        if sub.get_parameter_source(name) is ParameterSource.COMMANDLINE]
        except click.ClickException as e:
            raise CliError(f"#GPUQ line {number}: {e.format_message()}", EXIT_USAGE) from e
    return out


def apply_directives(params: dict[str, Any], given: Iterable[str],
                     directives: list[tuple[str, Any]]) -> dict[str, Any]:
    """Options from ``#GPUQ`` lines fill what the command line did not give; a later line
    wins over an earlier one. ``--env`` adds up: the lines' entries, then the command
    line's (so the command line wins for the same variable)."""
    given = set(given)
    out = dict(params)
    script_env: list[str] = []
    for name, value in directives:
        if name == "env_pairs":
            script_env += list(value)
        elif name not in given:
            out[name] = value
    out["env_pairs"] = (*script_env, *params.get("env_pairs", ()))
    return out


def _read_script(path_text: str, args: list[str]) -> str:
    path = Path(path_text)
    if not path.is_file():
        raise CliError(
            f"{path_text}: no such script. To run a command, put it after --: "
            f"gpuq submit [options] -- {' '.join(args)}", EXIT_USAGE)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"cannot read the script {path_text}: {e}", EXIT_USAGE) from e
    if not text.strip():
        raise CliError(f"the script {path_text} is empty", EXIT_USAGE)
    return text


def build_job(params: dict[str, Any], *, command: list[str] | None, script: str | None,
              environ: dict[str, str], cwd: str) -> dict[str, Any]:
    """The ``JobCreate`` body from the merged options."""
    try:
        exported = export_environment(params.get("export") or "ALL",
                                      params.get("env_pairs", ()), environ)
    except ValueError as e:
        raise CliError(str(e), EXIT_USAGE) from e
    environment = exported.environment
    if exported.withheld:
        names = ",".join(exported.withheld)
        click.echo(f"gpuq submit: not passing {names} to the job (they look like secrets); "
                   f"to pass them, name them: --export ALL,{names}", err=True)
    workdir = os.path.abspath(os.path.join(cwd, os.path.expanduser(params.get("workdir") or cwd)))
    body: dict[str, Any] = {"workdir": workdir, "environment": environment,
                            "idempotency_key": params.get("idempotency_key") or uuid.uuid4().hex}
    if command is not None:
        body["command"] = command
    else:
        body["script"] = script
    body.update({k: params[k] for k in _SPEC_KEYS if params.get(k) is not None})
    return body


@click.command("submit", cls=SubmitCommand,
               context_settings={"allow_interspersed_args": False})
@click.option("-G", "--gpus", type=click.IntRange(0), help="GPUs, all on one node [1].")
@click.option("--gpu-model", metavar="MODEL", help="Only GPUs of this model (A100-80GB...).")
@click.option("-c", "--cpus", type=click.IntRange(1), help="CPU cores [1].")
@click.option("--mem", "memory_mib", type=MemoryType(),
              help="Memory: 16G, 512M, or a number of MiB [no limit].")
@click.option("-t", "--time", "time_limit_s", type=TimeType(),
              help="Time limit: MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]], 90s, 2h, 1d [server's].")
@click.option("-J", "--name", help="Job name [the script's or the program's name].")
@click.option("-A", "--account", help="Account to charge [your default account].")
@click.option("-D", "--workdir", help="Directory the job runs in [the current one].")
@click.option("--export", metavar="ALL|NONE|VARS",
              help="Environment to pass: ALL (default; less names that look like secrets: "
                   "*TOKEN, *SECRET*, *PASSWORD, *API_KEY, AWS keys...), NONE, or "
                   "VAR1,VAR2=x (only those); ALL,VAR,VAR2=x adds (a name given is passed).")
@click.option("--env", "env_pairs", multiple=True, metavar="NAME=VALUE",
              help="Set a variable in the job's environment (repeatable).")
@click.option("--requeue/--no-requeue", default=None,
              help="Run the job again (from the start) if its node fails [--requeue].")
@click.option("--nice", type=click.IntRange(-10_000, 10_000), metavar="N",
              help="Lower the job's priority by N, to let others go first [0]; only admins "
                   "may give a negative N.")
@click.option("--qos", type=click.Choice(QOS_NAMES, case_sensitive=False),
              help="normal; preemptible (may run on idle reserved GPUs, is preempted first: "
                   "checkpoint on SIGTERM); high (if an admin allowed you) [the account's "
                   "default QOS, else normal].")
@click.option("-a", "--array", metavar="INDICES",
              help="A job array: the job once per index, e.g. 0-99, 1,3,5-7 or 0-99:5 "
                   "(every 5th); each finds its index in $GPUQ_ARRAY_TASK_ID (and "
                   "$SLURM_ARRAY_TASK_ID). All or none are submitted.")
@click.option("--idempotency-key", metavar="KEY",
              help="Submitting twice with one key makes one job [a fresh one per call].")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@click.option("--parsable", is_flag=True, help="Print only the job id.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED,
                metavar="SCRIPT [ARGS]... | -- COMMAND [ARGS]...")
@pass_env
@click.pass_context
def submit(ctx: click.Context, env: Env, **params: Any) -> None:
    """Submit a batch script, or a command given after --.

    \b
      gpuq submit job.sh [ARGS...]          # #GPUQ lines in job.sh set options
      gpuq submit -G 2 -t 2h -- python train.py --lr 0.1

    In a script, lines like "#GPUQ --gpus 2" before the first command set options, as
    #SBATCH does; options on the command line win. Script arguments reach a shell script
    as $1, $2...
    """
    args = list(params.pop("args") or ())
    if not args:
        raise click.UsageError("nothing to run: give a script (gpuq submit job.sh) or a "
                               "command after -- (gpuq submit -- python train.py)")
    if ctx.meta.get(_COMMAND_FORM):
        command, script = args, None
    else:
        text = _read_script(args[0], args)
        given = {n for n in params if ctx.get_parameter_source(n) is ParameterSource.COMMANDLINE}
        params = apply_directives(params, given, directive_options(ctx.command, text))
        params["name"] = params.get("name") or Path(args[0]).name[:128]
        try:
            command, script = None, script_with_args(text, args[1:])
        except ValueError as e:
            raise CliError(str(e), EXIT_USAGE) from e
    body = build_job(params, command=command, script=script, environ=dict(os.environ),
                     cwd=os.getcwd())
    if params.get("array"):
        _submit_array(env, body, params)
        return
    with env.client() as api:
        job = api.post("/v1/jobs", body, what="job", idempotent=True)
    if params.get("as_json"):
        echo_json(job)
    elif params.get("parsable"):
        click.echo(job["id"])
    else:
        qos = job.get("qos") or "normal"
        click.echo(f"Submitted job {job['id']}" + (f" (QOS {qos})" if qos != "normal" else ""))


def _submit_array(env: Env, body: dict[str, Any], params: dict[str, Any]) -> None:
    with env.client() as api:
        out = api.post("/v1/jobs/array", {**body, "array": params["array"]},
                       what="job array", idempotent=True)
    if params.get("as_json"):
        echo_json(out)
    elif params.get("parsable"):
        click.echo(out["array_job_id"])
    else:
        first = out["array_job_id"]
        count = out.get("count") or len(out["ids"])
        span = f"{first}" if count == 1 else f"{first}-{first + count - 1}"
        click.echo(f"Submitted array job {first}: {count} job"
                   f"{'s' if count != 1 else ''} (ids {span})")
