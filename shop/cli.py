"""`shop`: run, feed, watch and repair the event-driven shop. Each command is a thin layer over the module named in
its body; the wiring of every process is in shop/bootstrap.py."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any
from uuid import uuid4

import typer
from rich.console import Console
from rich.table import Table

from events.catalog import EVENT_TYPES
from events.envelope import Envelope
from events.settings import BusSettings
from notification_service.notification_log import read_notifications_from
from notification_service.service import NotificationSettings
from order_service.api import ApiSettings
from shop.services import APIS, CONSUMERS, SERVICES
from shop.services import handled_by as services_handling

SECRET_IN_URL = re.compile(r"(\w+://[^/:@\s]*:)[^@\s]+@")


def redact(text: str) -> str:
    """Any password inside a URL in `text` masked: error messages name servers, never their secrets."""
    return SECRET_IN_URL.sub(r"\1***@", text)


class ShopCli(typer.Typer):
    """A server that cannot be reached, or keys that are missing, end a command with one line saying so (secrets
    masked), not a traceback."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            from shop.bootstrap import UNAVAILABLE, MissingKeys

            if not isinstance(exc, (*UNAVAILABLE, MissingKeys, ConnectionError)):
                raise
            Console(stderr=True).print(f"shop: {type(exc).__name__}: {redact(str(exc))}", markup=False)
            raise SystemExit(1) from None


app = ShopCli(help=__doc__, no_args_is_help=True, rich_markup_mode="rich")
order_app = typer.Typer(help="Place orders through the order service's HTTP API.", no_args_is_help=True)
dlq_app = typer.Typer(help="Inspect, replay and purge dead letters.", no_args_is_help=True)
db_app = typer.Typer(help="The services' databases (and the monolith's).", no_args_is_help=True)
keys_app = typer.Typer(help="The services' signing keys.", no_args_is_help=True)
users_app = typer.Typer(help="Users of the user service.", no_args_is_help=True)
app.add_typer(order_app, name="order")
app.add_typer(dlq_app, name="dlq")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(users_app, name="users")
UNLIMITED_WIDTH = 100_000
"""Piped (no terminal), rich would fit tables to 80 columns and cut names short with "…": there, no limit, so a
script or a log reads every name whole. On a terminal, tables fit the terminal's width."""
console = Console() if sys.stdout.isatty() else Console(width=UNLIMITED_WIDTH)

ServiceName = Annotated[str, typer.Argument(help=f"one of: {', '.join(CONSUMERS)}")]
Json = Annotated[bool, typer.Option("--json", help="one JSON document on stdout instead of a table")]


def print_json(document: Any) -> None:
    """One JSON document on stdout, as it is (not through rich: no highlighting, no wrapping)."""
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def _check(name: str, choices: dict[str, Any], what: str) -> str:
    if name not in choices:
        raise typer.BadParameter(f"no {what} for {name!r}; choose from {', '.join(choices)}")
    return name


# ---------------------------------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------------------------------
@app.command()
def declare() -> None:
    """Declare every service's queue and bindings, and bring every service's database to the current schema
    (idempotent). Events published afterwards wait for their subscribers even if those have never run."""
    from shop.processes import prepare

    stores = prepare(BusSettings())
    console.print(f"declared queues: {', '.join(spec.queue for spec in CONSUMERS.values())}")
    for line in stores:
        console.print(f"store of {line}")


@keys_app.command("generate")
def keys_generate(
    directory: Annotated[Path | None, typer.Option("--dir", help="where to write them [default: SHOP_KEYS_DIR, else "
                                                               "var/keys]")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace existing pairs (every signed event in flight turns "
                                                 "unverifiable)")] = False,
) -> None:
    """Write an Ed25519 key pair per service: `<service>.key` (private: mount it only where that service runs) and
    `<service>.pub` (public: everywhere). Existing pairs are kept."""
    from events.adapters.ed25519.keyring import generate

    target = directory or BusSettings().keys_path
    written = generate(target, SERVICES, overwrite=overwrite)
    console.print(f"{len(written) // 2} key pair(s) written to {target}" if written else f"keys already in {target}")


@users_app.command("create-admin")
def users_create_admin(
    email: Annotated[str, typer.Option(help="the admin's address (their user name at POST /token)")],
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True,
                                          help="8 characters at least")],
    name: Annotated[str, typer.Option(help="the admin's name")] = "Admin",
) -> None:
    """Register an admin (who may create products and change prices, and read any order), in the user service's
    store. An address already registered is left as it is."""
    from shop.bootstrap import bootstrap
    from user_service.api import ensure_admin

    wiring = bootstrap()
    try:
        created = ensure_admin(wiring, email, password, name)
    finally:
        wiring.close()
    console.print(f"admin {email} registered" if created else f"[yellow]{email} is already registered[/]")


@db_app.command("upgrade")
def db_upgrade(
    monolith: Annotated[bool, typer.Option("--monolith", help="the monolith's one database instead")] = False,
) -> None:
    """Create (PostgreSQL) and migrate to the current schema every service's database (SHOP_DATABASE_URL,
    SHOP_<SERVICE>_DATABASE_URL), or the monolith's (SHOP_MONOLITH_DATABASE_URL)."""
    from events.adapters.sql import migrate
    from events.adapters.sql.engine import engines
    from events.settings import StoreSettings
    from shop.processes import prepare

    settings = BusSettings()
    if monolith:
        url = StoreSettings().monolith_url(settings.var_dir)
        console.print(f"monolith: {url.split('@')[-1]} at schema revision {migrate.upgrade(engines(url))}")
        return
    for line in prepare(settings):
        console.print(f"store of {line}")


@app.command()
def worker(
    service: ServiceName,
    loglevel: Annotated[str, typer.Option(help="celery log level")] = "WARNING",
    name: Annotated[
        str | None, typer.Option(help="node name, unique among live workers (default SERVICE@host)")
    ] = None,
) -> None:
    """Run one celery worker for SERVICE's queue (what `shop up` and the compose file start)."""
    from shop.worker import run_worker

    run_worker(_check(service, CONSUMERS, "worker"), loglevel=loglevel, node=name)


@app.command()
def api(service: Annotated[str, typer.Argument(help=f"one of: {', '.join(APIS)}")]) -> None:
    """Serve SERVICE's HTTP API: order_service on 5001, user_service on 5004, product_service on 5005 (each
    configurable: SHOP_ORDER_API_PORT, SHOP_USER_API_PORT, SHOP_PRODUCT_API_PORT)."""
    import uvicorn

    from shop.bootstrap import bootstrap_api
    from shop.processes import freeze_startup_heap

    settings = APIS[_check(service, APIS, "API")].settings()
    served = bootstrap_api(service)
    freeze_startup_heap()
    uvicorn.run(served, host=settings.host, port=settings.port, log_level="warning")


WithConsole = Annotated[bool, typer.Option(help="serve the live console (SHOP_CONSOLE_HOST/PORT, default "
                                            "http://127.0.0.1:5000; SHOP_CONSOLE_PORT=0 also turns it off)")]


@app.command()
def up(with_console: WithConsole = True) -> None:
    """Declare the topology and run every worker and every API in the foreground, and the live console. Ctrl-C stops
    them all."""
    from shop.console.run import start_console
    from shop.processes import start_everything

    report = lambda text: console.print(f"[dim]up:[/] {text}")  # noqa: E731
    supervisor, embedded = start_everything(BusSettings().var_dir, report=report)
    stop_console = start_console(supervisor, report) if with_console else None
    apis = ", ".join(
        f"{service.removesuffix('_service')}s on {api.settings().base_url}" for service, api in APIS.items())
    console.print(f"[green]shop is up[/]: {apis}  (Ctrl-C to stop)")
    try:
        supervisor.run_forever()
    finally:
        if stop_console:
            stop_console()
        if embedded:
            embedded.stop()


@app.command()
def demo(
    keep_running: Annotated[bool, typer.Option(help="stay up after the sample orders are notified")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for every notification")] = 60.0,
    with_console: WithConsole = True,
) -> None:
    """`shop up`, register a few users, stock a few products, place sample orders (confirmed; one refused for
    stock; one declined, its stock released) and follow the notification log until each customer is told."""
    from shop.demo import run_demo

    if not run_demo(console.print, _print_notification, timeout=timeout, keep_running=keep_running,
                    with_console=with_console):
        raise typer.Exit(1)


@app.command()
def monolith(
    dispatch: Annotated[str | None, typer.Option(
        help="sync: the whole saga in the request, in one transaction (default); queued: answered at once, the saga "
        "runs on a dispatcher thread [default: SHOP_MONOLITH_DISPATCH or sync]")] = None,
    with_console: WithConsole = True,
) -> None:
    """Run every service in ONE process over ONE database (SHOP_MONOLITH_DATABASE_URL, a SQLite file by default),
    behind the same HTTP APIs (all on port 5001 unless SHOP_ORDER_API_PORT says otherwise) and notification log. No
    Redis needed. Ctrl-C finishes what is due and stops; anything left is taken at the next start."""
    from shop.monolith import run_monolith

    if dispatch not in (None, "sync", "queued"):
        raise typer.BadParameter("--dispatch is sync or queued")
    console.print(f"[green]shop monolith[/]: APIs on {ApiSettings().base_url}  (Ctrl-C to stop)")
    run_monolith(dispatch=dispatch, console=with_console,
                 report=lambda text: console.print(f"[dim]monolith:[/] {text}"))


def _print_notification(line: dict[str, Any]) -> None:
    colour = "green" if line.get("type") == "OrderConfirmed" else "red"
    console.print(f"[dim]{line.get('sent_at', '')[:23]}[/] [{colour}]{line.get('type', '?'):15}[/] "
                  f"{line.get('message', line)}")


# ---------------------------------------------------------------------------------------------------------------------
# Feeding it
# ---------------------------------------------------------------------------------------------------------------------
@order_app.command("place")
def order_place(
    token: Annotated[str, typer.Option(envvar="SHOP_TOKEN", help="an access token (POST /token on the user API)")],
    customer: Annotated[str | None, typer.Option(help="for an admin: the customer to order for [default: the "
                                                      "token's own user]")] = None,
    item: Annotated[
        list[str] | None, typer.Option(help="PRODUCT:QUANTITY, repeatable; priced by the order service")
    ] = None,
    payment_method: Annotated[str, typer.Option(help="card | card_declined | card_flaky | ...")] = "card",
    count: Annotated[int, typer.Option(help="how many identical orders")] = 1,
) -> None:
    """Place orders through POST /orders, as the token's user (the API must be running: `shop up`; the products must
    exist)."""
    from rich.progress import track

    from shop.client import place_order

    lines = []
    for spec in item or ["book:1"]:
        try:
            product, quantity = spec.split(":")
            lines.append((product, int(quantity)))
        except ValueError:
            raise typer.BadParameter(f"--item {spec!r} is not PRODUCT:QUANTITY") from None
    base_url = ApiSettings().base_url
    for _ in track(range(count), description="placing orders", console=console, disable=count < 10):
        order = place_order(base_url, token, lines, payment_method, customer)
        if count < 10:
            console.print_json(data=order)


@app.command()
def publish(
    event_type: Annotated[str, typer.Argument(help=f"one of: {', '.join(sorted({t for t, _ in EVENT_TYPES}))}")],
    payload: Annotated[str, typer.Option("--json", help="the event's payload as JSON")],
    version: int = 1,
) -> None:
    """Publish one raw event (validated against its contract) to every subscribed queue, as the service that publishes
    that type (its private key must be in SHOP_KEYS_DIR)."""
    from pydantic import ValidationError

    from shop.bootstrap import bootstrap

    model = EVENT_TYPES.get((event_type, version))
    if model is None:
        raise typer.BadParameter(f"unknown event type {event_type} v{version}")
    try:
        event = model.model_validate_json(payload)
    except ValidationError as exc:
        console.print(f"[red]invalid {event_type} payload:[/]\n{exc}")
        raise typer.Exit(2) from None
    wiring = bootstrap()
    producers = sorted(wiring.publishers.get(event_type, ()))
    if not producers:
        console.print(f"[red]no service publishes {event_type}[/]: consumers would refuse it")
        raise typer.Exit(2)
    # Signed as the service that publishes this type, with its private key: consumers refuse anything else.
    envelope = Envelope.wrap(event, producer=producers[0],
                             correlation_id=getattr(event, "order_id", None) or uuid4())
    wiring.publish(envelope)
    queues = wiring.broker.subscribers(event_type)
    console.print(f"published {event_type} {envelope.event_id} to "
                  f"{', '.join(queues) or '[red]no queue: dead-lettered as unroutable[/]'}")


# ---------------------------------------------------------------------------------------------------------------------
# Watching it
# ---------------------------------------------------------------------------------------------------------------------
@app.command()
def logs(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new notifications")] = False,
) -> None:
    """Print the notification log, one line per notification."""
    path = NotificationSettings().notification_log
    offset, printed = 0, 0
    while True:
        lines, offset = read_notifications_from(path, offset)
        for line in lines:
            _print_notification(line)
        printed += len(lines)
        if not follow:
            if not printed:
                console.print(f"[dim]no notifications yet in {path}[/]")
            return
        time.sleep(0.25)


@app.command()
def status(as_json: Json = False) -> None:
    """Queue depths, messages in flight, dead letters, retries and live workers."""
    from shop.status import status_report, status_rows

    settings = BusSettings()
    if as_json:
        print_json(status_report(settings))
        return
    table = Table(title=f"shop on {settings.broker_url.split('@')[-1]}")
    rows = status_rows(settings)
    for column in rows[0]:
        table.add_column(column, justify="left" if column == "queue" else "right")
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)


@app.command()
def health(
    service: ServiceName,
    name: Annotated[str | None, typer.Option(help="the worker's node name [default: SERVICE@this host, as `shop "
                                                  "worker` names itself]")] = None,
    any_node: Annotated[bool, typer.Option("--any", help="any live worker of SERVICE will do")] = False,
) -> None:
    """Exit 0 when SERVICE's worker on this host (this container) has a live heartbeat, 1 otherwise, with one line
    saying which worker or why not: the healthcheck of a worker container (celery's remote control, which `celery
    inspect ping` needs, is off by design)."""
    from events.adapters.redis.connection import redis_client
    from shop.health import worker_health

    client = redis_client(BusSettings())
    try:
        result = worker_health(client, _check(service, CONSUMERS, "worker"), name, any_node)
    finally:
        client.close()
    typer.echo(result.reason, err=not result.alive)
    if not result.alive:
        raise typer.Exit(1)


@app.command()
def trace(order_id: Annotated[str, typer.Argument(help="the order id (every event of an order carries it as "
                                                         "correlation id)")],
          as_json: Json = False) -> None:
    """The order's journey across the services, from the event log: each event, who published it, what caused it and
    how long after its cause it was published."""
    from shop.bootstrap import bootstrap
    from shop.trace import journey, journey_document

    hops = journey(bootstrap().event_log, order_id)
    if not hops:
        if as_json:
            typer.echo(f"shop: no event of {order_id} in the event log (wrong id, or older than the log keeps)",
                       err=True)
            raise typer.Exit(1)
        console.print(f"[red]no event of {order_id} in the event log[/] (wrong id, or older than the log keeps)")
        raise typer.Exit(1)
    handled_by = services_handling()
    if as_json:
        print_json(journey_document(order_id, hops, handled_by))
        return
    number = {hop.event_id: index for index, hop in enumerate(hops, 1)}
    start = hops[0].occurred_at
    table = Table(title=f"order {order_id}: {len(hops)} events in "
                        f"{(hops[-1].occurred_at - start).total_seconds() * 1000:.1f} ms")
    for column in ("#", "+ms", "event", "published by", "caused by", "hop ms", "handled by", "event id"):
        table.add_column(column, justify="right" if column in ("#", "+ms", "hop ms") else "left")
    for index, hop in enumerate(hops, 1):
        cause = f"#{number[hop.cause.event_id]} {hop.cause.type}" if hop.cause else ("-" if not hop.causation_id
                                                                                      else "[dim]not logged[/]")
        table.add_row(
            str(index), f"{(hop.occurred_at - start).total_seconds() * 1000:.1f}", f"[bold]{hop.type}[/]",
            hop.producer, cause, f"{hop.latency_ms:.1f}" if hop.latency_ms is not None else "",
            ", ".join(handled_by.get(hop.type, [])) or "[dim]nobody[/]", hop.event_id[:8],
        )
    console.print(table)
    if traces := sorted({hop.trace_id for hop in hops if hop.trace_id}):
        console.print(f"OpenTelemetry trace: {', '.join(traces)}")


@app.command()
def metrics(
    serve: Annotated[
        bool, typer.Option("--serve", help="answer GET /metrics (SHOP_METRICS_HOST/PORT) until Ctrl-C")
    ] = False,
) -> None:
    """Every service's counters (messages by outcome, failures, handler latency histogram), dead letters and queue
    depths, in Prometheus' text format: printed once, or served for a scraper."""
    from shop.bootstrap import bootstrap
    from shop.metrics import MetricsSettings, render
    from shop.metrics import serve as serve_metrics

    client = bootstrap().redis
    if not serve:
        sys.stdout.write(render(client, SERVICES.values()))
        return
    settings = MetricsSettings()
    console.print(f"metrics on http://{settings.host}:{settings.port}/metrics  (Ctrl-C to stop)")
    with contextlib.suppress(KeyboardInterrupt):
        serve_metrics(client, SERVICES.values(), settings.host, settings.port)


@app.command()
def asyncapi(
    out: Annotated[Path, typer.Option(help="where the document goes ('-' for stdout)")] = Path("docs/asyncapi.yaml"),
) -> None:
    """Write the event catalogue as an AsyncAPI 3.0 document, generated from the pydantic event models and what each
    service handles and publishes. A test fails when the committed docs/asyncapi.yaml is stale: rerun this."""
    from shop.asyncapi import asyncapi_document, render

    text = render(asyncapi_document(SERVICES.values()))
    if str(out) == "-":
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    console.print(f"wrote {out} ({len(text.splitlines())} lines)")


# ---------------------------------------------------------------------------------------------------------------------
# Repairing it
# ---------------------------------------------------------------------------------------------------------------------
@dlq_app.command("list")
def dlq_list(
    service: Annotated[str | None, typer.Argument(help="only this service ('unroutable' too)")] = None,
    as_json: Json = False,
) -> None:
    """One line per dead letter: id, service, reason, attempts, when (with --json: every field whole, but the message,
    which `shop dlq show` prints)."""
    from shop.bootstrap import bootstrap

    records = bootstrap().dead_letters.list(service)
    if as_json:
        print_json({"count": len(records), "dead_letters": [
            {key: value for key, value in record.items() if key != "message"} for record in records]})
        return
    table = Table(title=f"{len(records)} dead letters")
    for column in ("id", "service", "reason", "attempts", "dead at", "detail"):
        table.add_column(column)
    for record in records:
        table.add_row(record["id"], record["service"], record["reason"], str(record["attempts"]),
                      record["dead_at"][:19], record["detail"][:60])
    console.print(table)


@dlq_app.command("show")
def dlq_show(record_id: str) -> None:
    """The whole dead letter, original message included."""
    from shop.bootstrap import bootstrap

    record = bootstrap().dead_letters.get(record_id)
    if record is None:
        console.print(f"[red]no dead letter {record_id}[/]")
        raise typer.Exit(1)
    console.print_json(data=record)


@dlq_app.command("replay")
def dlq_replay(
    record_id: Annotated[str | None, typer.Argument(help="the dead letter to replay")] = None,
    all_: Annotated[bool, typer.Option("--all", help="replay every replayable dead letter")] = False,
    service: Annotated[str | None, typer.Option(help="with --all: only this service")] = None,
) -> None:
    """Re-inject dead letters into their service's queue (after the cause is fixed). Signatures are kept: a
    tampered message stays rejected."""
    from events.deadletters import replay as replay_dead_letter
    from shop.bootstrap import bootstrap

    wiring = bootstrap()
    if all_:
        records = wiring.dead_letters.list(service)
    elif record_id:
        record = wiring.dead_letters.get(record_id)
        if record is None:
            console.print(f"[red]no dead letter {record_id}[/]")
            raise typer.Exit(1)
        records = [record]
    else:
        raise typer.BadParameter("give a dead letter id or --all")
    failures = 0
    for record in records:
        try:
            target = replay_dead_letter(record, wiring.dead_letters, wiring.broker, wiring.fresh_count)
            console.print(f"replayed {record['id']} into {target}")
        except ValueError as exc:
            failures += 1
            console.print(f"[yellow]kept {record['id']}:[/] {exc}")
    if failures and not all_:
        raise typer.Exit(1)


@dlq_app.command("purge")
def dlq_purge(
    service: Annotated[str | None, typer.Argument(help="only this service")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
) -> None:
    """Delete dead letters for good."""
    from shop.bootstrap import bootstrap

    if not yes and not typer.confirm(f"delete all dead letters{' of ' + service if service else ''}?"):
        raise typer.Abort()
    console.print(f"purged {bootstrap().dead_letters.purge(service)} dead letters")


@app.command()
def replay(
    service: Annotated[
        str, typer.Argument(help="a service that keeps projections (order_service, notification_service)")
    ],
    rebuild: Annotated[
        bool, typer.Option(help="first delete the projections' documents: rebuild from history alone")
    ] = False,
) -> None:
    """Feed SERVICE's projections (its local copies of other services' data) the history in the event log. Only
    projection handlers run: nothing is charged, notified or published again. A second replay skips what the first
    applied."""
    from shop.bootstrap import bootstrap
    from shop.replay import replay as replay_history

    _check(service, SERVICES, "service")
    try:
        result = replay_history(SERVICES[service], bootstrap(), rebuild=rebuild,
                                report=lambda text: console.print(f"[dim]{text}[/]"))
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    console.print(f"{service}: {result.read} events in the log, {result.replayed} replayed, "
                  f"{result.already_replayed} already replayed before, {result.rejected} rejected")


# ---------------------------------------------------------------------------------------------------------------------
# Measuring it: chaos, bench, compare
# ---------------------------------------------------------------------------------------------------------------------
@app.command()
def chaos(
    orders: Annotated[int, typer.Option(help="orders to place")] = 5000,
    kill_every: Annotated[float, typer.Option(help="mean seconds between two worker kills")] = 3.0,
    rate: Annotated[float, typer.Option(help="orders placed per second")] = 100.0,
    poison_ratio: Annotated[float, typer.Option(help="share of poison + tampered messages")] = 0.01,
    store: Annotated[str, typer.Option(help="the services' stores: redis (beside the broker), sqlite (a file each), "
                                            "postgres (a database each, on a private server)")] = "redis",
) -> None:
    """Place ORDERS while killing random workers (SIGKILL), restarting a private Redis once and interrupting the
    services' databases once, with ~1% poison and tampered messages; then audit every store. Exits non-zero on any
    loss or duplicate effect."""
    from shop.chaos import REPORTED, run_chaos

    result = run_chaos(orders=orders, kill_every=kill_every, rate=rate, poison_ratio=poison_ratio, store=store,
                       report=lambda text: console.print(f"[dim]{text}[/]"))
    table = Table(title="chaos run")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name in REPORTED:
        table.add_row(name.replace("_", " "), str(getattr(result, name)))
    console.print(table)
    if not result.passed:
        console.print(f"[red]FAILED:[/] {'; '.join(result.problems)}")
        raise typer.Exit(1)
    console.print("[green]passed: nothing lost, nothing done twice[/]")


@app.command()
def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="short runs (< 1 min): a smoke test, not a measurement")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="directory for bench.json and bench.png [default: var/bench]")
    ] = None,
    runs: Annotated[
        int | None, typer.Option(help="alternating saturation runs per pipeline (>= 3 for a headline)")
    ] = None,
    rates: Annotated[str | None, typer.Option(help="offered loads for latency, e.g. '50,100,200' orders/s "
                                                      "[default: fractions of each mode's own saturation]")] = None,
    soak: Annotated[int | None, typer.Option(
        "--soak", help="instead: N orders through the full system, sampled every tenth (growth with the data)")] = None,
    store: Annotated[str, typer.Option(help="with --soak: redis | sqlite | postgres")] = "redis",
) -> None:
    """Measure the full system on each store (Redis, SQLite, PostgreSQL) against a bare celery pipeline of the same
    shape, and the monolith in both dispatch modes: throughput, latency at fixed offered loads, CPU per order, peak
    RSS. Each pipeline runs on a private redis-server of its own; the PostgreSQL databases are SHOP_BENCH_POSTGRES_URL
    (dropped first)."""
    import signal

    from shop.bench.measure import Stalled
    from shop.bench.report import print_report, print_soak
    from shop.bench.runner import BenchSettings, run

    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the workers and Redis servers of the run are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if soak is not None:
        from pydantic import ValidationError

        from shop.bench.soak import SoakSettings, run_soak

        try:
            soak_overrides: dict[str, Any] = {"orders": soak, "store": store, **({"out_dir": out} if out else {})}
            soak_settings = SoakSettings(**soak_overrides)
        except ValidationError as exc:
            console.print(f"[red]{exc}[/]")
            raise typer.Exit(2) from None
        try:
            soaked = run_soak(soak_settings, report=lambda text: console.print(f"[dim]{text}[/]"))
        except (Stalled, RuntimeError) as exc:
            console.print(f"[red]soak aborted:[/] {exc}")
            raise typer.Exit(1) from None
        print_soak(console, soaked, soak_settings.out_dir)
        return

    overrides: dict[str, Any] = {
        key: value for key, value in {"out_dir": out, "runs": runs}.items() if value is not None}
    settings = BenchSettings.quick(**overrides) if quick else BenchSettings(**overrides)
    offered = [float(rate) for rate in rates.split(",")] if rates else None
    try:
        result = run(settings, offered, report=lambda text: console.print(f"[dim]{text}[/]"))
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    except (Stalled, RuntimeError) as exc:
        console.print(f"[red]benchmark aborted:[/] {exc}")
        raise typer.Exit(1) from None
    print_report(console, result, quick, settings.out_dir)


@app.command()
def compare(
    quick: Annotated[
        bool, typer.Option("--quick", help="a small workload (for tests): every scenario, few orders")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="where compare.md and compare.json go (default: var/compare)")
    ] = None,
) -> None:
    """Run the same workload against the microservices and the monolith; print and write the comparison table
    (latency, throughput, failure impact, scaling, deployment) beside the classic claims."""
    from shop.compare import compare as run_comparison

    out_dir = out or BusSettings().var_dir / "compare"
    result = run_comparison(out_dir, quick=quick, report=lambda text: console.print(f"[dim]{text}[/]"))
    table = Table(title=f"microservices vs monolith on {result.results['machine']['cores']} cores")
    for column in ("claim", "measure", "microservices", "monolith"):
        table.add_column(column)
    for row in result.table:
        table.add_row(row.claim, row.measure, row.microservices, row.monolith)
    console.print(table)
    console.print(f"how each row was measured: {result.markdown_path}; raw numbers: {result.json_path}")
