"""`gradbench <command> [args]`: the command-line entry point.

    gradbench train [overrides]      train one config (or a sweep with -m), Hydra-composed
    gradbench --help                 list the commands

Each Hydra command takes the usual Hydra flags: --help, --cfg job, -m/--multirun,
--info defaults-tree, --shell-completion install=bash.
"""

from __future__ import annotations

# Only the standard library here: `gradbench --help` and every Tab press import this module,
# and torch, pandas and matplotlib take seconds to import on a small machine. Hydra, the
# jobs and their libraries are imported by the command that needs them.
import contextlib
import importlib
import logging
import os
import shutil
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path


from gradbench.paths import CONF, config_dir  # noqa: E402  (standard library only)


def register_resolvers() -> None:
    """The configs' own resolvers, before Hydra composes (in the CLI and in each sweep worker);
    their modules are imported only when a config uses them."""
    from omegaconf import OmegaConf

    def sphere_lr(n):  # conf/protocol/functions_sphere.yaml: the forward gradient's best step on the sphere
        from gradbench.models.functions import sphere_forward_lr

        return sphere_forward_lr(n)

    OmegaConf.register_new_resolver("forward_gradient_sphere_lr", sphere_lr, replace=True)
    # conf/hydra/help/*.yaml: a command's own keys, with their comments, as conf/config.yaml has them
    # ($ doubled: Hydra fills the help template with string.Template)
    OmegaConf.register_new_resolver("gradbench_keys", lambda key: config_block(key).replace("$", "$$"), replace=True)
    # conf/hydra/help/train.yaml: the groups, those of the defaults list apart from those added with +
    OmegaConf.register_new_resolver("gradbench_groups", lambda: config_groups(given_config_dir(sys.argv)), replace=True)


def skip_hydra_group_listing() -> None:
    """Hydra fills $APP_CONFIG_GROUPS and $HYDRA_CONFIG_GROUPS for every help, used or not, by
    composing each of ~110 groups again (a second of CPU per `--help`); gradbench's help
    templates use neither (${gradbench_groups:} lists the groups from the folders), so the
    listing is skipped for the app's --help (--hydra-help keeps Hydra's own)."""
    from hydra._internal.hydra import Hydra

    Hydra.format_config_groups = lambda self, predicate, compact=True: ""


def config_groups(user_dir: str | None = None) -> str:
    """The help's group listing: `group: option, ...` for the groups of conf/config.yaml's
    defaults list (chosen with group=option), then the others as `+group:` (added with
    +group=option). Read from the folders (gradbench's conf/ and the user's --config-dir), where
    Hydra's own listing composes each group again (a second per `--help`)."""
    import yaml

    options: dict[str, set[str]] = {}
    for root in [Path(CONF), *([Path(user_dir).expanduser()] if user_dir else [])]:
        for path in root.rglob("*.yaml"):
            group = path.parent.relative_to(root).as_posix()
            if group != "." and not group.startswith("hydra"):
                options.setdefault(group, set()).add(path.stem)
    defaults = yaml.safe_load((Path(CONF) / "config.yaml").read_text()).get("defaults", [])
    chosen = {next(iter(d)).removeprefix("optional ") for d in defaults if isinstance(d, dict)}
    line = lambda name, group: f"{name}: {', '.join(sorted(options[group]))}"  # noqa: E731
    plain = [line(g, g) for g in sorted(options) if g in chosen]
    added = [line(f"+{g}", g) for g in sorted(options) if g not in chosen]
    return "\n".join([*plain, "", "Added with + (not in the defaults list: +group=option):", *added])


def config_block(key: str) -> str:
    """The lines of top-level `key` in conf/config.yaml (comments included), for a command's help."""
    lines = (Path(CONF) / "config.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:1] not in ("", " ", "#")), len(lines))
    return "\n".join(lines[start:end]).rstrip()


def _hydra_command(job_path: str, job_name: str):
    """A Hydra entry point that runs `module:function(cfg, run_dir)` as one job."""
    import hydra

    register_resolvers()

    @hydra.main(config_path=CONF, config_name="config", version_base="1.3")
    def command(cfg):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        register_resolvers()  # a sweep worker (joblib, SLURM) runs this in a fresh process
        module, function = job_path.split(":")
        job = getattr(importlib.import_module(module), function)
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        return run_job(lambda: job(cfg, run_dir), run_dir, multirun=hydra_cfg.mode == RunMode.MULTIRUN)

    command.__name__ = job_name
    return command


def run_job(job, run_dir: Path, multirun: bool):
    """Run one job. Bad input ends a single run with one clear line (exit status 2) and leaves no
    empty run dir. Inside a sweep, any failure is recorded in the job's summary.json and the
    sweep goes on. An interrupted run exits 128 + signal (a sweep in this process stops)."""
    from gradbench.errors import ConfigError, Interrupted, JobFailed, OccupiedRunDir, WriteFailed
    from gradbench.run.sweep import die_with_parent, in_worker, record

    if multirun:
        die_with_parent()
    try:
        return job()
    except Interrupted as e:
        print(f"gradbench: {e}", file=sys.stderr)
        if in_worker():  # a joblib worker: take no further job
            logging.shutdown()
            sys.stderr.flush()
            os._exit(128 + e.signum)
        sys.exit(128 + e.signum)
    except OccupiedRunDir as e:  # never touch the other run's files
        if not multirun:
            print(f"gradbench: error: {e}", file=sys.stderr)
            sys.exit(2)
        record(run_dir, "failed")
        logging.getLogger("gradbench").error("job refused, sweep goes on: %s", e)
    except ConfigError as e:
        if not multirun:
            print(f"gradbench: error: {e}", file=sys.stderr)
            discard_if_empty(run_dir)
            sys.exit(2)
        record_failure(run_dir, f"ConfigError: {e}")
    except JobFailed as e:
        if not multirun:
            print(f"gradbench: failed: {e}", file=sys.stderr)
            sys.exit(1)
        record_failure(run_dir, f"JobFailed: {e}")
    except WriteFailed as e:  # a full disk: no partial file under a final name, the rest stays
        if not multirun:
            print(f"gradbench: error: {e}", file=sys.stderr)
            sys.exit(1)
        record_failure(run_dir, f"WriteFailed: {e}")
    except OSError as e:  # a file that cannot be written otherwise: what is on disk stays
        if not multirun:
            print(f"gradbench: error: writing the outputs in {run_dir} failed: {e}", file=sys.stderr)
            sys.exit(1)
        record_failure(run_dir, f"OSError: {e}")
    except Exception as e:
        if not multirun:
            if (why := out_of_memory(e)) is not None:  # estimator.num_tangents=100000000, say: one line
                print(f"gradbench: error: out of memory ({why}): a smaller batch_size, estimator.num_tangents "
                      f"or model fits (the run's outputs so far are in {run_dir})", file=sys.stderr)
                sys.exit(1)
            raise
        record_failure(run_dir, traceback.format_exc())
    from gradbench.commands.train import worst

    return worst()  # the sweeper's worst value: the study goes on


def out_of_memory(error: BaseException) -> str | None:
    """What an allocation that failed tried (torch's CPU or CUDA allocator, or Python's), else None."""
    import re

    text = str(error)
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or "can't allocate memory" in text:
        found = re.search(r"tried to allocate ([\d.]+ ?\w*)", text)
        return f"tried to allocate {found.group(1)}" if found else type(error).__name__
    return None


def record_failure(run_dir: Path, error: str) -> None:
    """Mark a failed sweep job (keeping a summary.json the job already wrote) and log why."""
    from gradbench.errors import WriteFailed
    from gradbench.run.metrics import write_json
    from gradbench.run.sweep import record

    from gradbench.run import files

    summary_path = run_dir / "summary.json"
    try:
        summary = files.read_summary(summary_path) if files.exists(summary_path) else {}
    except ValueError:  # a broken summary (of this job's own earlier try, or planted): replaced
        summary = {}
    summary.update(stop_reason="failed", error=error)
    try:
        write_json(summary_path, summary)
    except WriteFailed as e:  # the disk is still full: the tally counts the job all the same
        logging.getLogger("gradbench").error("%s", e)
    record(run_dir, "failed")
    logging.getLogger("gradbench").error("job failed, sweep goes on: %s", error.strip().splitlines()[-1])


def discard_if_empty(run_dir: Path) -> None:
    """Remove a run dir that this command created (gradbench.run.sweep.CREATED) and that holds
    nothing but what Hydra wrote on entry (.hydra/, the log) and the job's write lock; then the
    folders above it that this command created, if empty. A dir that was there before, and
    every parent, is left alone."""
    from gradbench.run.rundir import LOCK
    from gradbench.run.sweep import CREATED

    made = CREATED.get(str(run_dir.absolute()))
    if made is None or run_dir.is_symlink() or not run_dir.is_dir():
        return
    if all(p.name in (".hydra", LOCK) or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)
        for folder in made:  # the date folder, if this command made it and this was its only run
            with contextlib.suppress(OSError):
                folder.rmdir()


def resume_arguments(rest: list[str]) -> list[str]:
    """`train resume=RUN_DIR ...`: the run's own overrides (from RUN_DIR/.hydra/overrides.yaml),
    then the ones given now (which win), writing into RUN_DIR and leaving its .hydra/ as it is.
    RUN_DIR is read as Hydra reads it (`'resume="/runs/a,b"'` is the dir /runs/a,b), and the
    stored overrides are data: any that could make gradbench call something is refused
    (gradbench.run.targets) before Hydra sees them."""
    given = [a for a in rest if a.startswith("resume=")]
    if not given:
        return rest
    value = override_value(given[-1])
    if not isinstance(value, str) or value.lower() in ("", "true", "false", "null"):
        return rest
    from gradbench.run import files, targets
    from gradbench.errors import hydra_quote

    path = Path(value).expanduser()
    saved = path / ".hydra" / "overrides.yaml"
    if not files.exists(saved):
        fail(f"resume must be true or a run dir (with .hydra/overrides.yaml), got {value!r}")
    try:  # plain strings (no `${`), then checked as overrides: no Hydra setting, allowed options only
        lines = files.read_overrides(saved)
        targets.check_overrides(lines, str(saved), given_config_dir(rest))
    except ValueError as e:  # BadRunFile, UnsafeConfig: one line naming the file
        fail(str(e))
    key = lambda arg: arg.partition("=")[0].lstrip("+~")  # noqa: E731
    mine = {key(a) for a in rest}
    original = [a for a in lines if key(a) not in mine]
    return [*original, *rest, f"hydra.run.dir={hydra_quote(str(path))}", "hydra.output_subdir=null"]


def override_value(arg: str):
    """The value of one `key=value` override as Hydra parses it (quotes removed); the text after
    `=` if Hydra cannot parse it (Hydra then says why)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(arg).value()
    except Exception:
        return arg.partition("=")[2]


def given_config_dir(args: list[str]) -> str | None:
    """The user's `--config-dir DIR` (or `-cd DIR`, `--config-dir=DIR`), if given."""
    for i, arg in enumerate(args):
        if arg in ("--config-dir", "-cd") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--config-dir="):
            return arg.partition("=")[2]
    return None


def fail(message: str) -> None:
    print(f"gradbench: error: {message}", file=sys.stderr)
    sys.exit(2)


COMMANDS = {
    "train": "train one model (a sweep with -m); outputs under ./outputs/",
    "check": "compare every gradient estimator with autograd at one point (float64)",
    "variance": "each estimator's error against its theory as an MLP grows in width and depth (plot)",
    "report": "aggregate a sweep directory into tables and plots",
    "data": "load (download once, cache) the configured dataset and print its splits",
    "bench": "time estimate + update of several estimators side by side (ratios, R, peak memory)",
    "bench-report": "gather bench runs into one table and draw scaling curves",
    "eval": "evaluate a finished run's model.pt on a split (metrics, confusion, predictions)",
    "functions": "draw test-function runs: paths over contours, the sphere's steps against dimension",
    "search": "the same optimizer × rate search for every method, then the best ones longer (backprop-free table)",
}
HYDRA_COMMANDS = {"train": "gradbench.commands.train:train_job", "check": "gradbench.commands.check:check_job",
                  "variance": "gradbench.commands.variance:variance_job",
                  "data": "gradbench.commands.train:data_job", "bench": "gradbench.commands.bench:bench_job"}  # Hydra commands: function(cfg, run_dir)
PLAIN_COMMANDS = {"report": "gradbench.commands.report:main", "bench-report": "gradbench.commands.bench_report:main",
                  "eval": "gradbench.commands.evaluate:main", "functions": "gradbench.commands.functions_report:main",
                  "search": "gradbench.commands.search:main"}  # argparse commands: function(argv)


def complete_command(argv: list[str]) -> bool:
    """Tab completion (`eval "$(gradbench -sc install=bash)"`): Hydra's script calls
    `gradbench -sc query=bash` with the line in COMP_LINE. The command word completes to the
    commands; a Hydra command's overrides are Hydra's to complete, once the command word is out
    of the line (True: go on to Hydra); a plain command's arguments are the shell's (file names)."""
    line = os.environ.get("COMP_LINE")
    if line is None or not any(a.startswith("query=") for a in argv):
        return True  # install / uninstall: Hydra writes the script
    point = int(os.environ.get("COMP_POINT", len(line)))
    words = line[:point].split(" ")
    if len(words) <= 2:  # still typing the command; the shell filters by what is typed
        print("\n".join(COMMANDS))
        return False
    if words[1] not in HYDRA_COMMANDS:
        return False  # no choices: the shell completes file names (`gradbench report outputs/<TAB>`)
    cut = len(words[0]) + 1 + len(words[1])
    os.environ["COMP_LINE"] = line[:len(words[0])] + line[cut:]
    os.environ["COMP_POINT"] = str(point - len(words[1]) - 1)
    return True


def usage() -> str:
    lines = ["usage: gradbench <command> [args]", "", "commands:"]
    lines += [f"  {name:<13} {text}" for name, text in COMMANDS.items()]
    lines += ["", "`gradbench <command> --help` shows a command's options and config groups."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    try:
        run(sys.argv[1:] if argv is None else list(argv))
    except KeyboardInterrupt:  # Ctrl-C before a training loop took the signal (imports, composing, a sweep's parent)
        print("gradbench: interrupted", file=sys.stderr)
        sys.exit(130)


def run(argv: list[str]) -> None:
    # torch.func's first jvp scripts its decompositions with torch.jit: torch's own warning.
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
    # A full disk fails the log file's writes too: the job reports it in one line, the log
    # must not add a traceback per record.
    logging.raiseExceptions = False
    program = os.path.basename(sys.argv[0]) or "gradbench"
    if argv and argv[0] in ("-sc", "--shell-completion"):
        if not complete_command(argv):
            return
        argv = ["train", *argv]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"gradbench: error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    if command in PLAIN_COMMANDS:
        if {"-h", "--help"} & set(rest):  # the options alone (stdlib argparse): no torch, pandas or matplotlib
            from gradbench.commands.arguments import print_help

            print_help(command)
            return
        module, function = PLAIN_COMMANDS[command].split(":")
        sys.exit(getattr(importlib.import_module(module), function)(rest))
    os.environ["GRADBENCH_COMMAND"] = command  # hydra.job.name: the log file is <command>.log
    if command == "train":
        rest = resume_arguments(rest)
    if {"-h", "--help"} & set(rest):
        rest = [f"hydra/help={command}", *rest]  # conf/hydra/help/<command>.yaml: its usage, keys, examples
        skip_hydra_group_listing()
    sys.argv = [program, *rest]  # Hydra parses sys.argv
    if not PRINT_ONLY & set(rest):
        with exit_on_interrupt():
            import torch  # noqa: F401  (the seconds-long import every command needs, before any dir exists)
    from gradbench.run.sweep import CREATED, RESULT, guard_sweep

    RESULT.clear()
    CREATED.clear()
    sweep = guard_sweep() if {"-m", "--multirun"} & set(rest) else contextlib.nullcontext()
    with sweep, checked_sweep(rest), one_line_errors(command, rest):
        _hydra_command(HYDRA_COMMANDS[command], command)()
    if RESULT.get("counts", {}).get("failed"):
        sys.exit(1)  # a sweep with failed jobs, after every job ran (the tally line says which)


def checked_sweep(rest: list[str]):
    """A sweep: every job's config checked before the first starts (gradbench.run.preflight)."""
    if not {"-m", "--multirun"} & set(rest) or PRINT_ONLY & set(rest):
        return contextlib.nullcontext()
    from gradbench.run.job import validate
    from gradbench.run.preflight import checked_jobs

    return checked_jobs(validate)


# Hydra's flags that print and exit: no run follows, so no torch to import
PRINT_ONLY = {"-h", "--help", "-sc", "--shell-completion", "--cfg", "-c", "--info", "-i"}


@contextlib.contextmanager
def exit_on_interrupt():
    """Ctrl-C while nothing is written yet: one line, exit 130 at once. A KeyboardInterrupt raised
    inside torch's import can be swallowed by a library's bare `except` (the run then went on);
    a handler that exits does not depend on that. Left as it was where SIGINT is ignored (a
    sweep's worker, nohup) or off the main thread (in-process use)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def interrupted(signum, frame):
        os.write(2, b"gradbench: interrupted\n")
        os._exit(130)

    signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def one_line_errors(command: str, rest: list[str]):
    """A bad override (an unknown key, a missing option, a syntax error) in one line and exit 2,
    like every other bad input, where Hydra prints several lines and exits 1. HYDRA_FULL_ERROR
    (set for this call only) makes Hydra raise its error instead of printing it."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    except (ConfigCompositionException, MissingConfigException, OverrideParseException) as e:
        print(f"gradbench: error: {hydra_message(e, command, rest)}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # Hydra writing .hydra/ on a full disk (the job's own writes are handled in run_job)
        print(f"gradbench: error: writing {e.filename or 'the run dir'} failed: {(e.strerror or str(e)).lower()}",
              file=sys.stderr)
        sys.exit(1)
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


def closest_key(key: str, user_dir: str | None = None) -> str | None:
    """The existing key nearest to a mistyped one (difflib): conf/config.yaml's keys, the group
    names, and for `group.key` the keys the group's options have (gradbench's and the user's)."""
    import difflib

    import yaml

    roots = [Path(CONF), *([Path(user_dir).expanduser()] if user_dir else [])]
    known = set(flat_keys(yaml.safe_load((Path(CONF) / "config.yaml").read_text())))
    for root in roots:
        for path in root.rglob("*.yaml"):
            group = path.parent.relative_to(root).as_posix()
            if group == "." or group.startswith("hydra"):
                continue
            known.add(group.split("/")[0])
            try:
                option = yaml.safe_load(path.read_text())
            except yaml.YAMLError:
                continue
            if isinstance(option, dict) and "/" not in group:
                known.update(f"{group}.{k}" for k in flat_keys(option) if not k.startswith("_"))
    known.discard("defaults")
    found = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return found[0] if found else None


def flat_keys(tree: dict, prefix: str = "") -> list[str]:
    """{'a': {'b': 1}} → ['a', 'a.b']: every key a dotted override may name."""
    keys = []
    for name, value in (tree or {}).items():
        keys.append(f"{prefix}{name}")
        if isinstance(value, dict):
            keys += flat_keys(value, f"{prefix}{name}.")
    return keys


def hydra_message(error: Exception, command: str, rest: list[str]) -> str:
    """Hydra's composition error as one line: an unknown key by name, a missing option with the options."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.startswith("See https")]
    cause = str(error.__cause__ or "")
    if lines and lines[0].startswith("Could not override") and "not in struct" in cause:
        key = lines[0].split("'")[1]
        close = closest_key(key, given_config_dir(rest))
        hint = f": did you mean {close!r}?" if close else ""
        return (f"unknown key {key!r}{hint} (it is not in the config; "
                f"`gradbench {command} --help` lists the keys, +{key}=... adds a new one)")
    if len(lines) > 2 and lines[1].startswith("Available options"):
        options = lines[2:lines.index("Config search path:")] if "Config search path:" in lines else lines[2:]
        return f"{lines[0]}; options: {', '.join(options)}"
    if getattr(error, "override", None):  # a syntax error: name the argument
        lines.insert(0, f"cannot parse {error.override!r}:")
    if cause:
        lines.append(cause.splitlines()[0])
    return " ".join(lines) or type(error).__name__


if __name__ == "__main__":
    main()
