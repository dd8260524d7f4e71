"""`trainyard` command line: `train`, `tune`, `run` (the main job end to end), `report`,
`jobs` (the job queue)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from trainyard.cli import jobs
from trainyard.storage import exists, join, write_text


class _Help(argparse.HelpFormatter):
    """Help that shows each option's default where it has a telling one (not None or off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        telling = not (action.default is None or action.default is False or action.default is argparse.SUPPRESS)
        shown = telling and action.option_strings and "default" not in text
        return f"{text} (default: %(default)s)" if shown else text


class _Parser(argparse.ArgumentParser):
    """Options are spelled out (`--worker` is not taken for `--workers`), and every command's
    help shows the defaults; subcommands' parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)


def _parser() -> argparse.ArgumentParser:
    """The command line: `train`, `tune`, `run`, `report` and `jobs`."""
    parser = _Parser(prog="trainyard", description="Train and tune PyTorch models, locally or on Ray.")
    parser.add_argument("--verbose", action="store_true", default=False, help="show debug logs (and, on Ray, Ray's own logs)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_tune, _add_run, _add_report, jobs.add_parser):
        add(sub)
    return parser


def _add_train(sub: Any) -> None:
    """`trainyard train CONFIG [k=v ...]`: one training run, here or on Ray Train workers."""
    train = sub.add_parser("train", help="train a model from an experiment config")
    train.add_argument("config", help="experiment YAML, e.g. jobs/configs/addition.yaml")
    train.add_argument("overrides", nargs="*", help="key=value, e.g. epochs=3 model.d_model=64")
    train.add_argument("--resume", default=None, help="checkpoint or run directory to resume from")
    train.add_argument("--workers", type=worker_count, default=0, metavar="N|MIN-MAX",
                       help="Ray Train workers (DDP, local Ray unless RAY_ADDRESS); MIN-MAX: elastic, as many as the cluster holds; 0: this process")
    train.add_argument("--gpu", action="store_true", help="with --workers: one GPU per worker")
    train.add_argument("--fresh", action="store_true", help="start a new run (by default running the same command again resumes its run)")
    train.add_argument("--name", default=None, help="run name, its folder under the storage (default: derived from the command)")
    add_storage(train, "--storage-path")
    train.add_argument("--results", default=None, help="write the results (JSON) here")
    train.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="show debug logs and Ray's own logs")


def _add_tune(sub: Any) -> None:
    """`trainyard tune SPACE --config CONFIG`: a sweep with Ray Tune + Optuna."""
    tune = sub.add_parser("tune", help="sweep a search space with Ray Tune + Optuna")
    tune.add_argument("space", help="search space YAML, e.g. tune_spaces/addition_small.yaml")
    tune.add_argument("--config", required=True, help="experiment YAML the trials start from")
    tune.add_argument("overrides", nargs="*", help="key=value overrides of the experiment config")
    tune.add_argument("--samples", type=int, default=10, help="number of trials")
    tune.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as CPUs allow)")
    tune.add_argument("--scheduler", default="asha", choices=["asha", "median", "none"], help="what stops poor trials early")
    tune.add_argument("--workers-per-trial", type=int, default=1, help="> 1: each trial is a Ray Train run")
    tune.add_argument("--gpus-per-trial", type=float, default=0, help="e.g. 0.5 packs two trials per GPU")
    tune.add_argument("--name", default=None, help="sweep name: the same name resumes an interrupted sweep")
    add_storage(tune, "--storage-path")
    tune.add_argument("--seed", type=int, default=0, help="the searcher's seed")
    tune.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="show Ray's own logs")


def _add_run(sub: Any) -> None:
    """`trainyard run CONFIG --space SPACE`: the main job, resumable."""
    run = sub.add_parser("run", help="the main job: sweep, final training on Ray Train, verified export, report (resumable)")
    run.add_argument("config", help="experiment YAML; its final: section changes the final training (e.g. epochs)")
    run.add_argument("overrides", nargs="*", help="key=value overrides of the experiment config")
    run.add_argument("--space", required=True, help="search space YAML, e.g. tune_spaces/addition_small.yaml")
    run.add_argument("--samples", type=int, default=8, help="sweep trials")
    run.add_argument("--workers", type=int, default=2, help="Ray Train workers of the final training")
    run.add_argument("--gpu", action="store_true", help="a GPU per trial and per final worker")
    run.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as CPUs allow)")
    run.add_argument("--scheduler", default="asha", choices=["asha", "median", "none"], help="what stops poor trials early")
    run.add_argument("--seed", type=int, default=0, help="the searcher's seed")
    run.add_argument("--name", default=None, help="run name (default: derived from the command, so rerunning it resumes)")
    add_storage(run, "--output-dir")
    run.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="show debug logs and Ray's own logs")


def _add_report(sub: Any) -> None:
    """`trainyard report RUN_DIR`: report.html and report.md."""
    report = sub.add_parser("report", help="write report.html and report.md for a run, training or sweep directory")
    report.add_argument("run_dir", help="a run's location a trainyard command printed (a path or a URI), or a run's name under --storage")
    add_storage(report)


def worker_count(text: str) -> int | tuple[int, int]:
    """`--workers`: a count, or `MIN-MAX` for an elastic run."""
    low, dash, high = text.lstrip("-").partition("-")
    try:
        value = (int(low), int(high)) if dash and not text.startswith("-") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of workers (2) or a range (2-4)") from None
    if isinstance(value, tuple) and not 1 <= value[0] <= value[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: a range MIN-MAX needs 1 <= MIN <= MAX (e.g. 2-4)")
    return value


def workers_text(workers: int | tuple[int, int]) -> str:
    return f"{workers[0]}-{workers[1]}" if isinstance(workers, tuple) else str(workers)


def add_storage(parser: argparse.ArgumentParser, *older: str) -> None:
    """`--storage URI`, on every command: where runs keep everything they must keep (`older`:
    the option's earlier names, still taken)."""
    parser.add_argument(
        "--storage", *older, dest="storage", default=None, metavar="URI",
        help="where runs persist: a local or shared path, or a URI (s3://bucket/prefix, gs://...; S3-compatible endpoints "
             "and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) (default: $TRAINYARD_STORAGE, else runs/)",
    )


def _closest_option(parser: argparse.ArgumentParser, stray: list[str], args: argparse.Namespace) -> str:
    """' (did you mean --workers?)' for a misspelt or shortened option of the command given."""
    import difflib

    command, deeper = parser, True
    while deeper:  # down to the (sub)command given: `jobs submit` is two levels
        deeper = False
        for action in command._subparsers._group_actions if command._subparsers else ():
            chosen = action.choices.get(getattr(args, action.dest, None))
            if chosen is not None:
                command, deeper = chosen, True
    known = [o for action in command._actions for o in action.option_strings]
    for word in stray:
        if word.startswith("--"):
            close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1)
            if close:
                return f" (did you mean {close[0]}?)"
    return ""


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line as `trainyard` reads it (a mistake exits 2 with argparse's message)."""
    parser = _parser()
    # key=value overrides may come after options (`tune SPACE --config C epochs=3`),
    # which argparse's positional collection does not allow: gather them here.
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if "=" not in e or e.startswith("-") or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}{_closest_option(parser, stray, args)}")
    if extra:
        args.overrides = [*getattr(args, "overrides", []), *extra]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if getattr(args, "verbose", False):
        os.environ["TRAINYARD_LOG_LEVEL"] = "DEBUG"
    from trainyard._logging import command_logs

    previous = signal.getsignal(signal.SIGTERM)
    _stop_on_sigterm()
    try:
        with command_logs():  # the command is the application: its lines, whatever else set up logging here
            return _dispatch(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command; a user's mistake is one line and exit code 2, a stop says how to resume."""
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "tune":
            return _tune(args)
        if args.command == "run":
            return _run(args)
        if args.command == "jobs":
            from trainyard.cli import jobs

            return jobs.run(args)
        if args.command == "report":
            from trainyard.report import write_report

            print(f"report: {write_report(_report_target(args))}")
            return 0
    except KeyboardInterrupt as e:
        print(f"trainyard: {_stopped_how(e)}{_how_to_resume(args)}", file=sys.stderr)
        return 128 + (signal.SIGTERM if _terminated(e) else signal.SIGINT)
    except Exception as e:  # noqa: BLE001 - sorted below: the user's mistakes, or ours
        cause = user_error(e)
        if cause is None:
            raise
        if getattr(args, "verbose", False):
            import traceback

            traceback.print_exception(e)
        print(f"trainyard: error: {cause}", file=sys.stderr)
        return 2
    return 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping the job, a preempted VM): the command stops as on Ctrl-C."""


class _SigtermStops:
    """The handler: raises Terminated, and remembers it was called (Ray's ray.get turns what a
    signal handler raises into a plain KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: object) -> None:
        self.received = True
        raise Terminated()


def _stop_on_sigterm() -> None:
    """From here on SIGTERM stops the command the way Ctrl-C does (trainyard's Ray connection
    keeps this handler: ray_env.ensure_ray)."""
    signal.signal(signal.SIGTERM, _SigtermStops())


def _terminated(e: BaseException) -> bool:
    handler = signal.getsignal(signal.SIGTERM)
    return isinstance(e, Terminated) or (isinstance(handler, _SigtermStops) and handler.received)


def _stopped_how(e: BaseException) -> str:
    return "stopped (SIGTERM)" if _terminated(e) else "interrupted"


def _how_to_resume(args: argparse.Namespace) -> str:
    """What the same command needs to continue where a stopped one was (its run's name: the
    CLI names a Ray run it starts, so that a stop can say it)."""
    if args.command == "run":
        return ": run the same command again to resume"
    if args.command == "train" and args.workers:
        return f": run {args.name} keeps its checkpoints; resume it with: {_same_command(args)}"
    if args.command == "tune":
        storage = ["--storage", args.storage] if args.storage else []
        again = ["trainyard", "tune", args.space, "--config", args.config, *args.overrides, "--name", args.name, *storage]
        return f": the sweep keeps its finished trials; resume it with: {shlex.join(again)}"
    return ""


def _default_run_name(args: argparse.Namespace) -> str:
    """The run a `train` command trains: the command's own (a rerun resumes it), or with
    --fresh a new one; says so when a rerun resumes."""
    from trainyard._logging import get_logger
    from trainyard.cli.runners import command_run_name, run_folder
    from trainyard.engine.run_folder import latest_valid
    from trainyard.engine.setup import run_id
    from trainyard.experiment import load_spec
    from trainyard.storage import default_storage, is_local

    if args.fresh:
        return f"{Path(args.config).stem}-{run_id()}"
    spec = load_spec(args.config, args.overrides)
    name = command_run_name(args.config, spec, args.workers)
    storage = args.storage or default_storage()
    run_dir = run_folder(spec, name, args.workers, storage)
    if args.resume is None and is_local(storage) and latest_valid(run_dir) is not None:
        get_logger("trainyard.cli").info("this command's run %s has checkpoints: resuming it (--fresh starts a new run)", run_dir)
    return name


def _same_command(args: argparse.Namespace) -> str:
    """The command that continues this `train` run: the same one, named where --fresh named it."""
    again = ["trainyard", "train", args.config, *args.overrides]
    again += ["--workers", workers_text(args.workers)] if args.workers else []
    again += ["--name", args.name] if args.named else []
    again += ["--storage", args.storage] if args.storage else []
    return shlex.join(again)


def user_error(e: BaseException) -> BaseException | None:
    """The user-caused error inside `e` (Ray wraps a worker's exception in its own), or None
    for a defect, which keeps its traceback."""
    from trainyard._trust import SharedStorageError
    from trainyard.engine.checkpoint import CheckpointError

    expected = (ValueError, TypeError, FileNotFoundError, CheckpointError, SharedStorageError, ConnectionError, FloatingPointError)
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, expected) and type(e).__module__.split(".")[0] != "ray":
            return e
        inner = getattr(e, "cause", None)  # ray.exceptions.RayTaskError
        failures = getattr(e, "worker_failures", None)  # ray.train's TrainingFailedError
        if isinstance(failures, dict) and failures:
            inner = next(iter(failures.values()))
        e = inner if isinstance(inner, BaseException) else (e.__cause__ or e.__context__)
    return None


def _train(args: argparse.Namespace) -> int:
    from trainyard._logging import get_logger
    from trainyard.cli.runners import run_experiment

    if isinstance(args.workers, int) and args.workers < 0:
        raise ValueError(f"--workers {args.workers}: give 0 (this process) or a number of Ray Train workers")
    log = get_logger("trainyard.cli")
    if args.fresh and (args.resume or args.name):
        raise ValueError(f"--fresh starts a new run under a new name of its own: drop {'--resume' if args.resume else '--name'} (or --fresh)")
    args.named = args.fresh or args.name is not None  # the rerun must name the run (a derived name derives again)
    args.name = args.name or _default_run_name(args)  # named here, so that a stopped run can say how to resume it
    interrupt = _stop_on_interrupt() if not args.workers else None
    with interrupt or contextlib.nullcontext(), _in_command_terms(args):
        results = run_experiment(
            args.config,
            args.overrides,
            workers=args.workers,
            gpu=args.gpu,
            name=args.name,
            storage_path=args.storage,
            resume_from=args.resume,
            fresh=args.fresh,
            hooks=[interrupt] if interrupt else None,
        )
    if interrupt is not None and interrupt.signum is not None:
        how = "stopped (SIGTERM)" if interrupt.signum == signal.SIGTERM else "interrupted"
        log.info("%s: the position is saved in %s. Resume with:\n  %s", how, results["checkpoint_path"], _same_command(args))
        return 128 + interrupt.signum
    summary = results["metrics_summary"]
    last = summary.iloc[-1].to_dict() if len(summary) else {}
    exact = f", validation exact match {100 * last['val/exact_match']:.1f}%" if "val/exact_match" in last else ""
    early = f" (stopped early at step {results['global_step']})" if str(results.get("stopped_early")).startswith("early stopping") else ""
    log.info("done in %.1fs%s: final_loss %.4f, best epoch %d%s; checkpoint %s", results["training_time"], early, results["final_loss"], results["best_epoch"], exact, results["checkpoint_path"])
    if results.get("export_path"):
        log.info("export bundle: %s (try: python %s --help)", results["export_path"], Path(results["export_path"]) / "inference.py")
    from trainyard.engine.results import results_as_json

    out = results_as_json(results)
    if args.results:
        Path(args.results).write_text(json.dumps(out, indent=1, default=str))
    if results.get("run_dir") and exists(results["run_dir"]):
        from trainyard.report import write_report

        write_text(join(results["run_dir"], "results.json"), json.dumps(out, indent=1, default=str))
        log.info("report: %s", write_report(results["run_dir"]))
    return 0


def _stop_on_interrupt():
    """A hook for an in-process run: the first Ctrl-C or SIGTERM asks the trainer to stop
    after the current batch, saving a checkpoint of that position (as `request_stop` does);
    a second one interrupts at once. Use it as a context manager around the run."""
    from trainyard.engine.hooks import TrainingHooks

    class StopOnInterrupt(TrainingHooks):
        def __init__(self) -> None:
            self.signum: int | None = None  # the signal that stopped the run
            self._trainer = None

        def __enter__(self) -> "StopOnInterrupt":
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
            return self

        def __exit__(self, *exc: object) -> None:
            for s, handler in self._previous.items():
                signal.signal(s, handler)

        def _handle(self, signum: int, frame: object) -> None:
            if self.signum is not None or self._trainer is None:
                raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
            self.signum = signum
            name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
            self._trainer.request_stop(f"interrupted ({name})")
            print(f"\ntrainyard: stopping after this batch and saving its position ({name} again to quit at once)", file=sys.stderr)

        def on_train_begin(self, trainer, train_dataset, val_dataset) -> None:
            self._trainer = trainer

    return StopOnInterrupt()


@contextlib.contextmanager
def _in_command_terms(args: argparse.Namespace):
    """A used run folder refused by the engine, told as this command continues it (--resume,
    not Python's resume_from=)."""
    from trainyard.engine.run_folder import RunFolderInUse

    try:
        yield
    except RunFolderInUse as e:
        if "holds checkpoints" in e.problem:
            again = ["trainyard", "train", args.config, *args.overrides, *(["--workers", workers_text(args.workers)] if args.workers else [])]
            raise ValueError(f"{e.run_dir} {e.problem}. Continue it with: {shlex.join(again)}; or start afresh in another checkpoint_dir=") from None
        raise ValueError(f"{e.run_dir} {e.problem}. Run this command again when that run has ended (it resumes), or start a new run with --fresh") from None


def _tune(args: argparse.Namespace) -> int:
    from trainyard.cli.runners import run_sweep
    from trainyard.execution.remote import run_name

    args.name = args.name or run_name("sweep")  # named here, so that a stopped sweep can say how to resume it
    result = run_sweep(
        args.space,
        args.config,
        args.overrides,
        num_samples=args.samples,
        max_concurrent=args.max_concurrent,
        scheduler=args.scheduler,
        workers_per_trial=args.workers_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        name=args.name,
        storage_path=args.storage,
        seed=args.seed,
    )
    from trainyard.report import write_report

    write_report(result.path)
    import yaml

    number = result.dataframe.set_index("trial").loc[result.best_trial, "number"]
    print(f"# best {result.metric} = {result.best_metrics.get(result.metric)!r} ({result.mode}), trial {number}; sweep in {result.path}")
    best_file = join(result.path, "best_config.yaml")
    if exists(best_file):
        print(f"# {best_file}: the experiment with these values filled in; train it with:\n#   trainyard train {best_file}")
    print(yaml.safe_dump(dict(result.best_params), sort_keys=False), end="")  # the values the search chose, as its space names them
    return 0


def _report_target(args: argparse.Namespace) -> str:
    """The run `trainyard report` reports: RUN_DIR as given (a path or a URI), or with
    --storage the run of that name there."""
    from trainyard.storage import folder_name

    if args.storage:
        return join(args.storage, folder_name(args.run_dir, "run name (with --storage, give the run's name)"))
    return args.run_dir


def _run(args: argparse.Namespace) -> int:
    from trainyard.pipeline.run import run_pipeline, summary

    pipeline = run_pipeline(
        args.config, args.space, args.overrides, samples=args.samples, workers=args.workers, gpu=args.gpu,
        max_concurrent=args.max_concurrent, scheduler=args.scheduler, seed=args.seed, name=args.name, storage=args.storage,
    )
    print("\n".join(summary(pipeline)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
