"""The ``hilum`` command line."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from hilum.config import ALL_PERMISSIONS, ConfigError, RemoteAE, Settings, load_settings
from hilum.domain.errors import HilumError
from hilum.storage.base import StorageError

console = Console(stderr=False, soft_wrap=True)  # no hard wraps in paths when piped
err = Console(stderr=True, soft_wrap=True)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--data-dir", type=Path, help="data directory (index + storage)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hilum", description="Hilum PACS")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the DICOM (and HTTP) server")
    _common(serve)
    serve.add_argument("--ae-title", help="this server's AE title")
    serve.add_argument(
        "--dicom-port", type=int,
        help="plain DICOM port (default 11112; 0 = none, TLS only: needs dicom.tls_port)",
    )
    serve.add_argument("--http-port", type=int, help="HTTP port (default 8042)")
    serve.add_argument(
        "--host", help="address to listen on for DICOM (HTTP: the http.host setting)"
    )
    serve.add_argument("--workers", type=int, help="DICOM receiving processes (0 = per core)")

    ae = sub.add_parser("ae", help="manage known remote AEs")
    ae_sub = ae.add_subparsers(dest="ae_command", required=True)
    ae_add = ae_sub.add_parser("add", help="add a remote AE")
    _common(ae_add)
    ae_add.add_argument("name")
    ae_add.add_argument("ae_title")
    ae_add.add_argument("host")
    ae_add.add_argument("port", type=int)
    ae_add.add_argument("--description", default="")
    ae_add.add_argument(
        "--permissions", default=",".join(ALL_PERMISSIONS), metavar="LIST",
        help="services it may use on Hilum, comma-separated from store,find,move,get "
        "(default: all; '' = C-ECHO only)",
    )
    ae_add.add_argument("--tls", action="store_true", help="associate with it over DICOM TLS")
    ae_list = ae_sub.add_parser("list", help="list remote AEs")
    _common(ae_list)
    ae_rm = ae_sub.add_parser("remove", help="remove a remote AE")
    _common(ae_rm)
    ae_rm.add_argument("name")

    from hilum.auth import cli as auth_cli

    auth_cli.add_parser(sub, _common)

    from hilum.audit import cli as audit_cli

    audit_cli.add_parser(sub, _common)

    from hilum.storage import keys_cli

    keys_cli.add_parser(sub, _common)

    imp = sub.add_parser("import", help="import files, folders, zip files, DICOMDIR media")
    _common(imp)
    imp.add_argument("paths", nargs="+", type=Path)
    imp.add_argument("--threads", type=int, default=4)

    exp = sub.add_parser(
        "export", help="export stored studies to a folder or a zip file, optionally de-identified"
    )
    _common(exp)
    exp.add_argument("--study", action="append", default=[], metavar="UID",
                     help="a Study Instance UID to export (repeatable)")
    exp.add_argument("--patient-id", metavar="ID", help="export this patient's studies")
    exp.add_argument("--out", type=Path, required=True, metavar="DIR|FILE.zip",
                     help="a new (or empty) folder, or a new .zip file")
    exp.add_argument("--deidentify", action="store_true",
                     help="apply the PS3.15 Basic Application Level Confidentiality Profile")
    exp.add_argument("--profile-option", action="append", default=[], metavar="OPTION",
                     help="a profile option, e.g. retain-modified-dates (repeatable; "
                     "see docs/deidentification.md)")
    exp.add_argument("--date-shift-days", type=int, metavar="N",
                     help="shift dates by N days (implies retain-modified-dates)")
    exp.add_argument("--pseudonym", metavar="NAME",
                     help="PatientName/PatientID of the output; {n} numbers patients")
    exp.add_argument("--mapping", type=Path, metavar="FILE.csv",
                     help="write the original -> replacement table (confidential!)")
    exp.add_argument("--allow-burned-in", action="store_true",
                     help="export instances with BurnedInAnnotation YES instead of refusing them")

    remote_help = "a known remote AE name, or AET@host:port"
    echo = sub.add_parser("echo", help="C-ECHO a remote AE")
    _common(echo)
    echo.add_argument("remote", help=remote_help)

    store = sub.add_parser("store", help="C-STORE files to a remote AE")
    _common(store)
    store.add_argument("remote", help=remote_help)
    store.add_argument("paths", nargs="+", type=Path)

    for name, helptext in (("find", "C-FIND"), ("move", "C-MOVE"), ("get", "C-GET")):
        p = sub.add_parser(name, help=f"{helptext} against a remote AE")
        _common(p)
        p.add_argument("remote", help=remote_help)
        if name == "move":
            p.add_argument("destination", help="AE title to move to")
        p.add_argument("-L", "--level", default="STUDY",
                       choices=["PATIENT", "STUDY", "SERIES", "IMAGE"])
        p.add_argument("--root", default="STUDY", choices=["STUDY", "PATIENT"],
                       help="query/retrieve information model")
        p.add_argument("-k", "--key", action="append", default=[], metavar="Keyword=Value",
                       help="matching/return key, e.g. -k PatientID=123 -k StudyDate=20240101-")
        if name == "get":
            p.add_argument("-o", "--output", type=Path, default=Path("."), help="output folder")
    return parser


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    if getattr(args, "data_dir", None) is not None:
        overrides["data_dir"] = args.data_dir
    settings = load_settings(args.config, **overrides)
    # Everything Hilum writes holds patient data: private whatever the umask (0600 files,
    # 0700 directories; 0640 / 0750 with data_dir_group_access).
    os.umask(settings.private_mask)
    return settings


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        err.print(f"[red]configuration error[/red]: {exc}")
        return 2
    except HilumError as exc:
        err.print(f"[red]error[/red]: {exc}")
        return 1
    except StorageError as exc:  # e.g. a file encrypted under a key that is not configured
        err.print(f"[red]storage error[/red]: {escape(str(exc))}")
        return 1
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        err.print(f"[red]database error[/red]: {reason}")
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command == "serve":
        return _serve(args)
    if command == "ae":
        return _ae(args)
    if command == "user":
        from hilum.auth import cli as auth_cli

        return auth_cli.run(args, _settings(args), console)
    if command == "audit":
        from hilum.audit import cli as audit_cli

        return audit_cli.run(args, _settings(args), console)
    if command == "keys":
        from hilum.storage import keys_cli

        return keys_cli.run(args, lambda: _settings(args), console)
    if command == "import":
        return _import(args)
    if command == "export":
        return _export(args)
    return _scu(args)


def _serve(args: argparse.Namespace) -> int:
    # First of all: SIGTERM / SIGINT only ask to stop, and every step of the start-up
    # checks; a signal never leaves a half-started worker behind.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    from hilum.app import DataDirLock, check_private, create_private, prepare
    from hilum.dimse import tls
    from hilum.dimse.server import DimseServer
    from hilum.logging import configure_logging
    from hilum.processes import StopRequested
    from hilum.web.server import HttpServer

    settings = _settings(
        args,
        dicom={"ae_title": args.ae_title, "port": args.dicom_port, "host": args.host,
               "workers": args.workers},
        http={"port": args.http_port},
    )
    configure_logging(settings.log_level)
    tls.check(settings)  # unreadable certificates or keys: stop before anything starts
    create_private(settings)
    lock = DataDirLock(settings.data_dir)
    http = HttpServer(settings)
    dimse = DimseServer(settings)
    try:
        prepare(settings, recover=True)
        check_private(settings)
        if stop.is_set():
            raise StopRequested
        _initial_admin(settings)
        http.start(wait=False, stop=stop)  # both kinds of workers start at the same time
        dimse.start(stop=stop)
        http.wait_ready(stop=stop)
        dicom = settings.dicom
        if not dicom.port:
            listening = f"{dicom.host}, TLS on port {dicom.tls_port} only (no plain DICOM port)"
        else:
            listening = f"{dicom.host}:{dicom.port}"
            if dicom.tls_port:
                listening += f", TLS on port {dicom.tls_port}"
        scheme = "https" if settings.http.tls_certificate else "http"
        console.print(
            f"Hilum: DICOM {dicom.ae_title} on {listening}"
            f" ({settings.dicom_workers()} receiving processes), HTTP on "
            f"{scheme}://{settings.http.host}:{settings.http.port} ({settings.http_workers()} "
            f"processes), data in {settings.data_dir.resolve()}"
        )
        dimse.supervise(stop, *([http.pool] if http.pool is not None else []))
    except StopRequested:
        err.print("stopped while starting")
    finally:
        dimse.terminate()  # both kinds at once, then wait for each
        http.terminate()
        dimse.stop()
        http.stop()
        lock.release()
    return 0


def _initial_admin(settings: Settings) -> None:
    """First start with authentication on: an administrator with a random password."""
    if not settings.auth.enabled:
        console.print("WARNING: authentication is switched off (auth.enabled = false): "
                      "anyone who reaches the HTTP port can read and delete everything")
        return
    from hilum.auth.service import INITIAL_PASSWORD_FILE, AuthService
    from hilum.index.database import make_engine

    engine = make_engine(settings.index_url, pool_size=1)
    try:
        password = AuthService(engine, settings.auth).ensure_initial_admin(settings.data_dir)
    finally:
        engine.dispose()
    if password:
        console.print(
            f"Created the administrator 'admin' with password: {password}\n"
            f"(shown once; also in {settings.data_dir.resolve() / INITIAL_PASSWORD_FILE}, readable "
            "only by you: delete it after you have changed the password with 'hilum user passwd admin')"
        )


def _ae(args: argparse.Namespace) -> int:
    from hilum.app import prepare
    from hilum.audit.service import AuditService, os_user
    from hilum.index.database import make_engine
    from hilum.index.nodes import RemoteNodes

    settings = _settings(args)
    prepare(settings)
    engine = make_engine(settings.index_url, pool_size=1)
    nodes = RemoteNodes(engine)
    audit = AuditService(settings, engine)

    def changed(detail: str) -> None:
        audit.configuration_changed(by=f"cli:{os_user()}", ip=audit.hostname,
                                    subject=f"remote-ae:{args.name}", detail=detail)

    try:
        if args.ae_command == "add":
            try:
                permissions = [p.strip() for p in args.permissions.split(",") if p.strip()]
                node = RemoteAE(name=args.name, ae_title=args.ae_title, host=args.host,
                                port=args.port, description=args.description,
                                permissions=permissions, tls=args.tls)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
                )
                raise HilumError(f"invalid remote AE: {problems}") from None
            nodes.add(node)
            changed(f"remote AE added: {node.ae_title}@{node.host}:{node.port}, "
                    f"permissions {','.join(node.permissions) or 'echo only'} (hilum ae add)")
            console.print(
                f"added {node.name}: {node.ae_title}@{node.host}:{node.port}"
                f"{' (TLS)' if node.tls else ''}, may use: "
                f"{', '.join(['echo', *node.permissions])}"
            )
        elif args.ae_command == "remove":
            nodes.remove(args.name)
            changed("remote AE removed (hilum ae remove)")
            console.print(f"removed {args.name}")
        else:
            table = Table("name", "AE title", "host", "port", "description")
            for node in nodes.all():
                table.add_row(node.name, node.ae_title, node.host, str(node.port), node.description)
            console.print(table)
    finally:
        audit.close()
        engine.dispose()
    return 0


def _import(args: argparse.Namespace) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from hilum.app import build_services, prepare
    from hilum.ingest.importer import Importer

    settings = _settings(args)
    prepare(settings)
    services = build_services(settings)
    started = time.monotonic()
    done = {"n": 0, "bytes": 0}
    try:
        with Progress(
            SpinnerColumn(), TextColumn("importing"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=err,
            transient=False,
        ) as progress:
            task = progress.add_task("import", total=None, rate="")

            def on_item(_item: Any, _outcome: str, size: int) -> None:
                done["n"] += 1
                done["bytes"] += size
                elapsed = max(time.monotonic() - started, 1e-6)
                progress.update(
                    task, advance=1,
                    rate=f"{done['n'] / elapsed:.0f} files/s {done['bytes'] / elapsed / 1e6:.1f} MB/s",
                )

            summary = Importer(services.ingest, threads=args.threads).run(
                args.paths, on_item=on_item
            )
    finally:
        services.close()
    elapsed = time.monotonic() - started
    console.print(
        f"accepted {summary.accepted}, already stored {summary.already_stored}, "
        f"rejected {len(summary.rejected)} in {elapsed:.1f} s"
    )
    for label, reason in summary.rejected:
        console.print(f"  rejected {label}: {reason}", markup=False, highlight=False)
    return 1 if summary.rejected and not (summary.accepted or summary.already_stored) else 0


def _export(args: argparse.Namespace) -> int:
    from hilum.app import prepare
    from hilum.deid.export import ExportRequest, run_export
    from hilum.deid.job import DeidConfig
    from hilum.deid.options import parse_options
    from hilum.index.database import make_engine
    from hilum.storage.factory import open_storage

    needs_deid = [flag for flag, given in (
        ("--profile-option", bool(args.profile_option)),
        ("--date-shift-days", args.date_shift_days is not None),
        ("--pseudonym", args.pseudonym is not None),
        ("--mapping", args.mapping is not None),
        ("--allow-burned-in", args.allow_burned_in),
    ) if given]
    if needs_deid and not args.deidentify:
        raise HilumError(f"{needs_deid[0]} needs --deidentify")
    try:
        options = parse_options(args.profile_option)
    except ValueError as exc:
        raise HilumError(str(exc)) from None
    request = ExportRequest(
        out=args.out, study_uids=tuple(args.study), patient_id=args.patient_id,
        deidentify=args.deidentify, mapping=args.mapping,
        config=DeidConfig(options=options, date_shift_days=args.date_shift_days,
                          pseudonym=args.pseudonym, allow_burned_in=args.allow_burned_in),
    )
    settings = _settings(args)
    prepare(settings)
    engine = make_engine(settings.index_url, pool_size=1)
    started = time.monotonic()
    try:
        summary = run_export(engine, open_storage(settings), request)
    except OSError as exc:
        raise HilumError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    finally:
        engine.dispose()
    how = "as stored"
    if summary.job is not None:
        used = ", ".join(o.value for o in sorted(summary.job.options)) or "no options"
        how = f"de-identified (PS3.15 Basic Profile; {used})"
    console.print(
        f"exported {summary.instances} instance(s) of {len(summary.studies)} study(ies), "
        f"{summary.bytes / 1e6:.1f} MB, {how}, to {summary.out} "
        f"in {time.monotonic() - started:.1f} s", markup=False, highlight=False,
    )
    if summary.burned_in_kept:
        console.print(f"  {summary.burned_in_kept} instance(s) have burned-in annotation: "
                      "check their pixels before sharing", markup=False, highlight=False)
    for sop_instance_uid, reason in summary.refused:
        console.print(f"  refused {sop_instance_uid}: {reason}", markup=False, highlight=False)
    if summary.mapping_rows:
        console.print(f"  mapping of originals to replacements ({summary.mapping_rows} rows) in "
                      f"{args.mapping}: it re-identifies the data, keep it confidential",
                      markup=False, highlight=False)
    return 0 if summary.instances else 1


def _identifier(level: str, keys: list[str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for item in keys:
        keyword, _, value = item.partition("=")
        keyword = keyword.strip()
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise HilumError(f"unknown DICOM keyword {keyword!r} in -k {item!r}")
        ds.add_new(tag, dictionary_VR(tag), value or None)
    return ds


def _scu(args: argparse.Namespace) -> int:
    from hilum.dimse.scu import Scu, parse_address
    from hilum.index.database import make_engine
    from hilum.index.nodes import RemoteNodes

    settings = _settings(args)
    remote = parse_address(args.remote)
    if remote is None:
        from hilum.app import prepare

        prepare(settings)
        engine = make_engine(settings.index_url, pool_size=1)
        try:
            remote = RemoteNodes(engine).resolve(args.remote)
        finally:
            engine.dispose()
    scu = Scu.from_settings(settings.dicom)
    if args.command == "echo":
        code = scu.echo(remote)
        console.print(f"C-ECHO {remote.ae_title}@{remote.host}:{remote.port}: status 0x{code:04X}")
        return 0 if code == 0 else 1
    if args.command == "store":
        files = [
            p
            for root in args.paths
            for p in ([root] if root.is_file() else sorted(root.rglob("*")))
            if p.is_file()
        ]
        report = scu.store(remote, files)
        console.print(f"sent {report.sent} file(s), {report.bytes / 1e6:.1f} MB; failed {len(report.failed)}")
        for path, reason in report.failed:
            console.print(f"  failed {path}: {reason}", markup=False, highlight=False)
        return 1 if report.failed else 0
    identifier = _identifier(args.level, args.key)
    if args.command == "find":
        keys = [k.partition("=")[0] for k in args.key]
        table = Table(*keys) if keys else Table("result")
        count = 0
        for result in scu.find(remote, identifier, root=args.root):
            count += 1
            table.add_row(*[str(result.get(k, "") or "") for k in keys] if keys else [str(result)])
        console.print(table)
        console.print(f"{count} match(es)")
        return 0
    status: Dataset
    if args.command == "move":
        status = scu.move(remote, args.destination, identifier, root=args.root)
    else:
        status = scu.get(remote, identifier, args.output, root=args.root)
    code = int(status.Status)
    console.print(
        f"status 0x{code:04X}: completed {status.get('NumberOfCompletedSuboperations', 0)}, "
        f"failed {status.get('NumberOfFailedSuboperations', 0)}, "
        f"warning {status.get('NumberOfWarningSuboperations', 0)}"
    )
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
