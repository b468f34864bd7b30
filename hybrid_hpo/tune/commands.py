"""`hybrid-hpo sweep` and `hybrid-hpo dashboard` (registered by hybrid_hpo.cli)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hybrid_hpo.checks import check_is_sqlite, check_port_free, is_disk_full, sqlite_path
from hybrid_hpo.errors import ConfigError
from hybrid_hpo.tune.urls import check_rdb_url, redact

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``sweep`` and ``dashboard`` subcommands."""
    sweep = subparsers.add_parser(
        "sweep", help="run a Bayesian search (Ray Tune + Optuna) over the meta-settings of a spec file",
        description="Run the sweep described by SPEC (searches/*.yaml) on Ray Tune; every trial is a bilevel "
                    "run. Ends with the best trials and the command that opens optuna-dashboard.",
    )
    sweep.add_argument("spec", help="sweep file, e.g. searches/quickstart.yaml")
    sweep.add_argument("--storage", metavar="URL", help="Optuna RDB URL (default: sqlite in the results dir)")
    sweep.add_argument("--study-name", metavar="NAME", help="Optuna study name (default: <spec name>-<time>-<random>)")
    sweep.add_argument("--num-samples", type=int, metavar="N", help="number of trials (default: the spec's num_trials)")
    sweep.add_argument("--results-dir", metavar="DIR", help="where results go (default: results/<spec name>-<time>)")
    sweep.add_argument("--address", metavar="ADDR", help="join this Ray cluster instead of starting a local Ray")
    sweep.add_argument("--resume", action="store_true",
                       help="continue an interrupted sweep in --results-dir (default: the newest of this spec)")
    sweep.add_argument("--verbose", action="store_true",
                       help="Ray Tune's own console output (config and result boxes per trial, checkpoint lines, "
                            "Ray's notes) instead of one line per finished trial and a progress bar")
    sweep.set_defaults(handler=run_sweep_command)

    dashboard = subparsers.add_parser(
        "dashboard", help="open optuna-dashboard on a sweep's study storage",
        description="Serve optuna-dashboard for STORAGE (the URL `hybrid-hpo sweep` prints).",
    )
    dashboard.add_argument("--storage", required=True, metavar="URL", help="Optuna RDB URL, e.g. sqlite:////abs/optuna.sqlite3")
    dashboard.add_argument("--port", type=int, default=8080, metavar="P", help="port (default 8080)")
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="interface to bind (default 127.0.0.1; anything else warns: no authentication)")
    dashboard.add_argument("--artifact-dir", metavar="DIR",
                           help="the sweep's artifacts/ folder, so trials show their pictures")
    dashboard.set_defaults(handler=dashboard_command)


def run_sweep_command(args: argparse.Namespace) -> int:
    from hybrid_hpo.tune.plan import plan_sweep
    from hybrid_hpo.tune.report import sweep_summary
    from hybrid_hpo.tune.spec import load_spec
    from hybrid_hpo.tune.sweep import run_sweep

    spec = load_spec(args.spec)
    plan = plan_sweep(spec, storage=args.storage, study_name=args.study_name, num_samples=args.num_samples,
                      results_dir=args.results_dir, resume=args.resume)
    try:
        outcome = run_sweep(spec, plan, address=args.address, spec_path=str(Path(args.spec).resolve()),
                            verbose=args.verbose)
    except Exception as error:
        if not is_disk_full(error):
            raise
        print(f"hybrid-hpo sweep: error: disk full (No space left on device) while writing the sweep; free space "
              f"under {plan.results_dir}, then continue with: hybrid-hpo sweep {args.spec} --resume --results-dir "
              f"{plan.results_dir}", file=sys.stderr)
        return 1
    if outcome.stopped_because:
        print(f"hybrid-hpo sweep: error: {outcome.stopped_because}", file=sys.stderr)
    print(sweep_summary(spec, outcome))
    return 1 if outcome.errors or outcome.interrupted else 0


def dashboard_command(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port: {args.port} is not a port; use 1-65535, e.g. 8080")
    storage = check_rdb_url(args.storage, "--storage")
    path = sqlite_path(storage)
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"--storage: no SQLite file at {path}; pass the URL a sweep printed "
                              "(sqlite:////abs/path/optuna.sqlite3)")
        check_is_sqlite(path, "--storage")
    store = None
    if args.artifact_dir is not None:
        if not Path(args.artifact_dir).is_dir():
            raise ConfigError(f"--artifact-dir: no folder at {args.artifact_dir}; pass the artifacts/ folder of "
                              "the sweep's results dir (the sweep prints the command)")
        from optuna.artifacts import FileSystemArtifactStore

        store = FileSystemArtifactStore(args.artifact_dir)
    check_port_free(args.host, args.port)
    if args.host not in _LOOPBACK:
        print(f"hybrid-hpo dashboard: warning: binding {args.host} exposes the study (and writes to it) to "
              "the network without authentication", file=sys.stderr)
    from optuna_dashboard import run_server

    print(f"optuna-dashboard for {redact(storage)} on http://{args.host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    try:
        run_server(storage, host=args.host, port=args.port, artifact_store=store)
    except KeyboardInterrupt:
        pass
    return 0
