"""Command line: ``python -m labkit doctor|serve|release|grade|autograder|bench``.

    python -m labkit doctor                  check that servers, links and the trace work here
    python -m labkit serve chat --port 5001  run a reference service as its own process
        [--set OPTION=VALUE ...]             (an option of its create_app, such as name=inv-1)
    python -m labkit release                 write notebooks/ (student edition) from solutions/
    python -m labkit grade SUBMISSIONS --out RESULTS   score submitted notebooks through nbval
    python -m labkit bench --json FILE       measure labkit against its baselines
"""

from __future__ import annotations

import argparse
import json
import sys


def doctor(args) -> int:
    """Serve, call directly and through a faulty link, and report what happened."""
    import platform

    import requests

    import labkit
    from labkit.apps import create

    print(f"Python {platform.python_version()} on {platform.system()}")
    log = labkit.Trace()
    with labkit.serve(create("hello"), name="doctor-hello", trace=log) as hello, \
            labkit.Link(hello, latency_ms=20, trace=log) as link, \
            labkit.Client("doctor", trace=log) as client:
        print("direct call:", client.get(hello.url + "/hello").json()["message"])
        print("through a link with 20 ms latency:", client.get(link.url + "/hello").status_code)
        link.down = True
        try:
            client.get(link.url + "/hello")
        except requests.ConnectionError as exc:
            print("link down:", labkit.describe(exc))
    print(f"{len(log)} events traced; everything works.")
    return 0


def serve_cmd(args) -> int:
    """Run one reference service in the foreground, on labkit's server runner, until Ctrl-C or SIGTERM."""
    import importlib
    import signal
    import threading

    import labkit
    from labkit import tracing
    from labkit.apps import create

    options = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            print(f"serve: --set wants OPTION=VALUE, such as name=inv-1, not {item!r}", file=sys.stderr)
            return 2
        try:
            options[key] = json.loads(value)  # numbers and true/false as such
        except json.JSONDecodeError:
            options[key] = value
    # One bounded trace for the service and the clients it makes: a long run stays small.
    tracing.default = labkit.Trace(max_events=10_000)
    try:
        if ":" in args.service:  # package.module:app, an app or a function that makes one
            module, _, attribute = args.service.partition(":")
            app = getattr(importlib.import_module(module), attribute)
            app = app(**options) if callable(app) and not hasattr(app, "wsgi_app") else app
        else:
            app = create(args.service, **options)
        server = labkit.serve(app, args.name, host=args.host, port=args.port, trace=tracing.default)
    except (TypeError, ValueError, labkit.LabkitError) as error:
        print(f"serve: {error}", file=sys.stderr)
        return 2
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    if args.report_fd is not None:  # spawned by labkit.spawn: report to the parent, die with it
        from labkit import processes

        processes.report_to(args.report_fd, tracing.default, server.port, stopping, args.die_with_parent)
    print(f"serving {args.service} as {server.name!r} on http://{args.host}:{server.port} (Ctrl-C stops)",
          flush=True)
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        server.stop()
    print("stopped", flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("doctor", help="check that labkit works on this machine").set_defaults(run=doctor)

    serve = commands.add_parser("serve", help="run a reference service as its own process")
    serve.add_argument("service", help="which service (hello, shop, chat, ...), or an app as package.module:app")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=5000, help="port to listen on (0: any free port)")
    serve.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                       help="an option of the service's create_app, such as name=inv-1 (repeatable)")
    serve.add_argument("--name", default=None, help="its name on diagrams (default: the app's name)")
    serve.add_argument("--report-fd", type=int, default=None, help=argparse.SUPPRESS)  # labkit.spawn's pipe
    serve.add_argument("--die-with-parent", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(run=serve_cmd)

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] not in (["serve"], ["doctor"]):  # a service starts (and stops) without loading the grader's
        from labkit import bench                 # tools: nbformat's import alone takes over a second
        from labkit.grading import autograder, grade, release

        for module in (release, grade, autograder, bench):
            module.add_parser(commands)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
