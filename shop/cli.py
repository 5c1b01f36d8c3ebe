"""`shop`: run, feed, watch and repair the event-driven shop."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional
from uuid import uuid4

import httpx
import typer
from rich.console import Console
from rich.table import Table

from events.catalog import EVENT_TYPES
from events.envelope import Envelope
from events.settings import BusSettings
from notification_service.notification_log import read_notifications, read_notifications_from
from notification_service.service import NotificationSettings
from order_service.api import ApiSettings
from shop.seeding import NewProduct
from shop.services import APIS, CONSUMERS, SERVICES

app = typer.Typer(help=__doc__, no_args_is_help=True, rich_markup_mode="rich")
order_app = typer.Typer(help="Place orders through the order service's HTTP API.", no_args_is_help=True)
dlq_app = typer.Typer(help="Inspect, replay and purge dead letters.", no_args_is_help=True)
app.add_typer(order_app, name="order")
app.add_typer(dlq_app, name="dlq")
console = Console()

ServiceName = Annotated[str, typer.Argument(help=f"one of: {', '.join(CONSUMERS)}")]


def _check_service(name: str) -> str:
    if name not in CONSUMERS:
        raise typer.BadParameter(f"no worker for {name!r}; choose from {', '.join(CONSUMERS)}")
    return name


# ---------------------------------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------------------------------
@app.command()
def declare() -> None:
    """Declare every service's queue and bindings (idempotent). Events published afterwards wait for their
    subscribers even if those have never run."""
    from events.redis_bus import declare_topology

    declare_topology(BusSettings(), list(SERVICES.values()))
    console.print(f"declared queues: {', '.join(spec.queue for spec in CONSUMERS.values())}")


@app.command()
def worker(
    service: ServiceName,
    loglevel: Annotated[str, typer.Option(help="celery log level")] = "WARNING",
    name: Annotated[
        Optional[str], typer.Option(help="node name, unique among live workers (default SERVICE@host)")
    ] = None,
) -> None:
    """Run one celery worker for SERVICE's queue (what `shop up` and the compose file start)."""
    from shop.worker import run_worker

    run_worker(_check_service(service), loglevel=loglevel, node=name)


@app.command()
def api(
    service: Annotated[str, typer.Argument(help=f"one of: {', '.join(APIS)}")],
) -> None:
    """Serve SERVICE's HTTP API: order_service on 5001, user_service on 5004, product_service on 5005 (each
    configurable: SHOP_ORDER_API_PORT, SHOP_USER_API_PORT, SHOP_PRODUCT_API_PORT)."""
    import uvicorn

    from events.redis_bus import declare_topology, make_publisher

    if service not in APIS:
        raise typer.BadParameter(f"{service!r} has no API; choose from {', '.join(APIS)}")
    settings, api_settings = BusSettings(), APIS[service].settings()
    declare_topology(settings, list(SERVICES.values()))
    uvicorn.run(APIS[service].create_app(make_publisher(settings)), host=api_settings.host, port=api_settings.port,
                log_level="warning")


def _start_everything(var_dir: Path) -> tuple["Supervisor", object]:  # noqa: F821
    from shop.embedded_redis import choose_broker
    from shop.processes import supervised_commands
    from shop.supervisor import Supervisor

    url, embedded = choose_broker(var_dir)
    if embedded:
        console.print(f"[yellow]no Redis configured or running: started an embedded one at {url}[/]")
    os.environ["REDIS_URL"] = url
    from events.redis_bus import declare_topology

    declare_topology(BusSettings(), list(SERVICES.values()))
    supervisor = Supervisor(supervised_commands(), env={"REDIS_URL": url}, report=lambda text: console.print(f"[dim]up:[/] {text}"))
    supervisor.start()
    return supervisor, embedded


@app.command()
def up() -> None:
    """Declare the topology and run every worker and every API in the foreground. Ctrl-C stops them all."""
    supervisor, embedded = _start_everything(BusSettings().var_dir)
    apis = ", ".join(f"{service.removesuffix('_service')}s on {api.settings().base_url}" for service, api in APIS.items())
    console.print(f"[green]shop is up[/]: {apis}  (Ctrl-C to stop)")
    try:
        supervisor.run_forever()
    finally:
        if embedded:
            embedded.stop()


SAMPLE_USERS = {"alice": "Alice Martin", "bob": "Bob Chen", "carol": "Carol Diaz", "dave": "Dave Okafor",
                "erin": "Erin Walsh"}
SAMPLE_PRODUCTS = [
    NewProduct("book", "Book", "12.50", 50),
    NewProduct("lamp", "Lamp", "49.90", 10),
    NewProduct("bulb", "Bulb", "2.25", 100),
    NewProduct("chair", "Chair", "89.00", 5),
    NewProduct("vase", "Rare vase", "300.00", 1),
]
SAMPLE_ORDERS = [
    ("alice", [("book", 2)], "card"),
    ("bob", [("lamp", 1), ("bulb", 4)], "card"),
    ("carol", [("chair", 1)], "card_declined"),  # declined: the chair goes back on the shelf
    ("dave", [("vase", 2)], "card"),  # one vase in stock: rejected before any charge
    ("erin", [("book", 3)], "card"),
]


@app.command()
def demo(
    keep_running: Annotated[bool, typer.Option(help="stay up after the sample orders are notified")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for every notification")] = 60.0,
) -> None:
    """`shop up`, register a few users, stock a few products, place sample orders (confirmed; one refused for
    stock; one declined, its stock released) and follow the notification log until each customer is told."""
    from shop.seeding import seed_products_over_http

    settings = BusSettings()
    os.environ.setdefault("SHOP_LOG_MESSAGES", "false")  # the workers' per-message lines would bury the story
    supervisor, embedded = _start_everything(settings.var_dir)
    try:
        urls = {service: api.settings().base_url for service, api in APIS.items()}
        for url in urls.values():
            _wait_for_api(url, timeout=30)
        order_url, product_url = urls["order_service"], urls["product_service"]
        seed_products_over_http(product_url, order_url, SAMPLE_PRODUCTS)
        console.print("products: " + ", ".join(f"{p.name} {p.price} ({_stock(product_url, p.id)} in stock)"
                                               for p in SAMPLE_PRODUCTS))
        run = uuid4().hex[:4]  # a fresh address per run: a second demo on the same Redis registers new users
        users = {}
        for handle, name in SAMPLE_USERS.items():
            response = httpx.post(f"{urls['user_service']}/users", json={"name": name, "email": f"{handle}+{run}@example.com"},
                                  timeout=10)
            response.raise_for_status()
            users[handle] = response.json()
        console.print(f"registered {', '.join(user['name'] for user in users.values())}")
        placed = {}
        for handle, lines, method in SAMPLE_ORDERS:
            order = _place(order_url, users[handle]["id"], lines, method)
            placed[order["id"]] = order
            console.print(f"placed [bold]{order['id'][:8]}[/] for {users[handle]['name']}: "
                          f"{', '.join(f'{q} x {p}' for p, q in lines)}, total {order['total']} by {method}")
        log_path = NotificationSettings().notification_log
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < len(placed) and time.monotonic() < deadline:
            supervisor.poll()
            for line in read_notifications(log_path):
                if line["order_id"] in placed and line["order_id"] not in seen:
                    seen.add(line["order_id"])
                    _print_notification(line)
            time.sleep(0.1)
        if len(seen) < len(placed):
            console.print(f"[red]only {len(seen)} of {len(placed)} orders were notified within {timeout}s[/]")
            raise typer.Exit(1)
        for order_id in placed:
            order = httpx.get(f"{order_url}/orders/{order_id}").json()
            console.print(f"order {order_id[:8]} is [bold]{order['status']}[/]" + (f" ({order['reason']})" if order.get("reason") else ""))
        console.print("stock now: " + ", ".join(f"{p.name} {_stock(product_url, p.id)}" for p in SAMPLE_PRODUCTS)
                      + "  (the declined chair is back on the shelf)")
        console.print(f"[green]all {len(placed)} sample orders notified[/]; log: {log_path}")
        if keep_running:
            console.print("still up (Ctrl-C to stop); try `shop order place` or `shop logs -f` in another terminal")
            supervisor.run_forever()
    finally:
        supervisor.stop()
        if embedded:
            embedded.stop()


def _stock(product_url: str, product_id: str) -> int:
    return httpx.get(f"{product_url}/products/{product_id}", timeout=10).json()["stock"]


def _wait_for_api(base_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the API at {base_url} did not answer within {timeout}s")


def _place(base_url: str, customer: str, lines: list[tuple[str, int]], method: str) -> dict:
    body = {
        "customer_id": customer,
        "items": [{"product_id": product, "quantity": quantity} for product, quantity in lines],
        "payment_method": method,
    }
    response = httpx.post(f"{base_url}/orders", json=body, timeout=10)
    if response.status_code != 202:
        raise RuntimeError(f"POST /orders answered {response.status_code}: {response.text}")
    return response.json()


def _print_notification(line: dict) -> None:
    colour = "green" if line.get("type") == "OrderConfirmed" else "red"
    console.print(f"[dim]{line.get('sent_at', '')[:23]}[/] [{colour}]{line.get('type', '?'):15}[/] {line.get('message', line)}")


# ---------------------------------------------------------------------------------------------------------------------
# Feeding it
# ---------------------------------------------------------------------------------------------------------------------
@order_app.command("place")
def order_place(
    customer: Annotated[str, typer.Option(help="customer id (a user id from POST /users addresses them by name)")] = "alice",
    item: Annotated[list[str], typer.Option(help="PRODUCT:QUANTITY, repeatable; priced by the order service")] = ["book:1"],
    payment_method: Annotated[str, typer.Option(help="card | card_declined | card_flaky | ...")] = "card",
    count: Annotated[int, typer.Option(help="how many identical orders")] = 1,
) -> None:
    """Place orders through POST /orders (the API must be running: `shop up`; the products must exist)."""
    lines = []
    for spec in item:
        try:
            product, quantity = spec.split(":")
            lines.append((product, int(quantity)))
        except ValueError:
            raise typer.BadParameter(f"--item {spec!r} is not PRODUCT:QUANTITY") from None
    base_url = ApiSettings().base_url
    from rich.progress import track

    for _ in track(range(count), description="placing orders", console=console, disable=count < 10):
        order = _place(base_url, customer, lines, payment_method)
        if count < 10:
            console.print_json(data=order)


@app.command()
def publish(
    event_type: Annotated[str, typer.Argument(help=f"one of: {', '.join(sorted({t for t, _ in EVENT_TYPES}))}")],
    payload: Annotated[str, typer.Option("--json", help="the event's payload as JSON")],
    version: int = 1,
) -> None:
    """Publish one raw event (validated against its contract) to every subscribed queue."""
    from pydantic import ValidationError

    from events.redis_bus import make_publisher

    model = EVENT_TYPES.get((event_type, version))
    if model is None:
        raise typer.BadParameter(f"unknown event type {event_type} v{version}")
    try:
        event = model.model_validate_json(payload)
    except ValidationError as exc:
        console.print(f"[red]invalid {event_type} payload:[/]\n{exc}")
        raise typer.Exit(2) from None
    envelope = Envelope.wrap(event, producer="shop-cli", correlation_id=getattr(event, "order_id", None) or uuid4())
    publisher = make_publisher(BusSettings())
    publisher.publish(envelope)
    queues = publisher.router.queues_for(event_type)
    console.print(f"published {event_type} {envelope.event_id} to {', '.join(queues) or '[red]no queue: dead-lettered as unroutable[/]'}")


# ---------------------------------------------------------------------------------------------------------------------
# Watching it
# ---------------------------------------------------------------------------------------------------------------------
@app.command()
def logs(follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new notifications")] = False) -> None:
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
def status() -> None:
    """Queue depths, messages in flight, dead letters, retries and live workers."""
    from events.consumer import in_flight
    from events.deadletters import DeadLetterStore
    from events.keys import Keys
    from events.redis_bus import make_celery_app, redis_client

    settings = BusSettings()
    client = redis_client(settings)
    dead = DeadLetterStore(client).counts()
    try:
        replies = make_celery_app("shop.status", settings).control.inspect(timeout=1.0).ping() or {}
    except Exception:  # noqa: BLE001 - status must print even when the control channel fails
        replies = {}
    depths = None
    if settings.broker_is_amqp:  # broker choice: RabbitMQ counts its own queues (not what workers hold)
        from events.amqp_bus import waiting_counts

        depths = waiting_counts(settings, list(CONSUMERS.values()))
    table = Table(title=f"shop on {settings.broker_url.split('@')[-1]}")
    for column in ("queue", "waiting", "in flight", "unsettled", "relayed", "retries", "dead letters", "workers"):
        table.add_column(column, justify="right" if column != "queue" else "left")
    for name, spec in CONSUMERS.items():
        workers = sorted(host for host in replies if host.startswith(f"{name}@"))
        table.add_row(
            spec.queue,
            str(depths[name]) if depths is not None else str(client.llen(spec.queue)),
            "-" if depths is not None else str(in_flight(client, name)),
            str(client.hlen(Keys.outbox(name))),
            str(int(client.get(Keys.relayed(name)) or 0)),
            str(int(client.get(Keys.retries(name)) or 0)),
            str(dead.get(name, 0)),
            str(len(workers)) if workers else "[red]0[/]",
        )
    table.add_row("(unroutable)", "-", "-", "-", "-", "-", str(dead.get("unroutable", 0)), "-")
    if depths is not None:
        table.add_row("(to RabbitMQ)", "-", "-", str(client.hlen(Keys.outbox("amqp"))),
                      str(int(client.get(Keys.relayed("amqp")) or 0)), "-", "-", "-")
    console.print(table)


# ---------------------------------------------------------------------------------------------------------------------
# Dead letters
# ---------------------------------------------------------------------------------------------------------------------
def _dead_letter_store():
    from events.deadletters import DeadLetterStore
    from events.redis_bus import redis_client

    return DeadLetterStore(redis_client(BusSettings()))


@dlq_app.command("list")
def dlq_list(service: Annotated[Optional[str], typer.Argument(help="only this service ('unroutable' too)")] = None) -> None:
    """One line per dead letter: id, service, reason, attempts, when."""
    records = _dead_letter_store().list(service)
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
    record = _dead_letter_store().get(record_id)
    if record is None:
        console.print(f"[red]no dead letter {record_id}[/]")
        raise typer.Exit(1)
    console.print_json(data=record)


@dlq_app.command("replay")
def dlq_replay(
    record_id: Annotated[Optional[str], typer.Argument(help="the dead letter to replay")] = None,
    all_: Annotated[bool, typer.Option("--all", help="replay every replayable dead letter")] = False,
    service: Annotated[Optional[str], typer.Option(help="with --all: only this service")] = None,
) -> None:
    """Re-inject dead letters into their service's queue (after the cause is fixed). Signatures are kept: a
    tampered message stays rejected."""
    from events.redis_bus import make_publisher

    store, publisher = _dead_letter_store(), make_publisher(BusSettings())
    if all_:
        records = store.list(service)
    elif record_id:
        record = store.get(record_id)
        if record is None:
            console.print(f"[red]no dead letter {record_id}[/]")
            raise typer.Exit(1)
        records = [record]
    else:
        raise typer.BadParameter("give a dead letter id or --all")
    failures = 0
    for record in records:
        try:
            target = store.replay(record, publisher)
            console.print(f"replayed {record['id']} into {target}")
        except ValueError as exc:
            failures += 1
            console.print(f"[yellow]kept {record['id']}:[/] {exc}")
    if failures and not all_:
        raise typer.Exit(1)


@dlq_app.command("purge")
def dlq_purge(
    service: Annotated[Optional[str], typer.Argument(help="only this service")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
) -> None:
    """Delete dead letters for good."""
    if not yes and not typer.confirm(f"delete all dead letters{' of ' + service if service else ''}?"):
        raise typer.Abort()
    console.print(f"purged {_dead_letter_store().purge(service)} dead letters")


@app.command()
def replay(
    service: Annotated[str, typer.Argument(help="a service that keeps projections (order_service, notification_service)")],
    rebuild: Annotated[bool, typer.Option(help="first delete the projections' documents: rebuild from history alone")] = False,
) -> None:
    """Feed SERVICE's projections (its local copies of other services' data) the history in the event log. Only
    projection handlers run: nothing is charged, notified or published again. A second replay skips what the first
    applied."""
    from shop.replay import replay as replay_history

    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; choose from {', '.join(SERVICES)}")
    try:
        result = replay_history(SERVICES[service], BusSettings(), rebuild=rebuild,
                                report=lambda text: console.print(f"[dim]{text}[/]"))
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    console.print(f"{service}: {result.read} events in the log, {result.replayed} replayed, "
                  f"{result.already_replayed} already replayed before, {result.rejected} rejected")


# ---------------------------------------------------------------------------------------------------------------------
# Further commands (monolith, compare, bench, chaos) are registered below, one block each.
# ---------------------------------------------------------------------------------------------------------------------


@app.command()
def monolith() -> None:
    """Run order, payment and notification in ONE process over the in-process bus, behind the same HTTP API (port
    5001 unless SHOP_ORDER_API_PORT says otherwise) and notification log. No Redis needed. Ctrl-C drains and stops."""
    from shop.monolith import run_monolith

    console.print(f"[green]shop monolith[/]: orders API on {ApiSettings().base_url}  (Ctrl-C to stop)")
    run_monolith()


@app.command()
def chaos(
    orders: Annotated[int, typer.Option(help="orders to place")] = 5000,
    kill_every: Annotated[float, typer.Option(help="mean seconds between two worker kills")] = 3.0,
    rate: Annotated[float, typer.Option(help="orders placed per second")] = 100.0,
    poison_ratio: Annotated[float, typer.Option(help="share of poison + tampered messages")] = 0.01,
) -> None:
    """Place ORDERS while killing random workers (SIGKILL) and restarting a private Redis once, with ~1% poison and
    tampered messages; then audit every store. Exits non-zero on any loss or duplicate effect."""
    from shop.chaos import run_chaos

    result = run_chaos(orders=orders, kill_every=kill_every, rate=rate, poison_ratio=poison_ratio,
                       report=lambda text: console.print(f"[dim]{text}[/]"))
    table = Table(title="chaos run")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name in ("orders", "poison_orders", "tampered_messages", "kills", "worker_restarts", "redis_restarts",
                 "settled", "lost", "double_charged", "duplicate_notifications", "missing_notifications",
                 "dead_lettered", "poison_not_dead_lettered", "unexpected_dead_letters", "stock_mismatches", "relayed",
                 "outbox_unsettled",
                 "seconds"):
        table.add_row(name.replace("_", " "), str(getattr(result, name)))
    console.print(table)
    if not result.passed:
        console.print(f"[red]FAILED:[/] {'; '.join(result.problems)}")
        raise typer.Exit(1)
    console.print("[green]passed: nothing lost, nothing done twice[/]")


@app.command()
def bench(
    quick: Annotated[bool, typer.Option("--quick", help="short runs (< 1 min): a smoke test, not a measurement")] = False,
    out: Annotated[Optional[Path], typer.Option(help="directory for bench.json and bench.png [default: var/bench]")] = None,
    runs: Annotated[Optional[int], typer.Option(help="alternating saturation runs per pipeline (>= 3 for a headline)")] = None,
    rates: Annotated[Optional[str], typer.Option(help="offered loads for latency, e.g. '50,100,200' orders/s "
                                                      "[default: fractions of the slowest saturation]")] = None,
) -> None:
    """Measure the full system against a bare celery pipeline of the same shape (and the monolith): throughput,
    latency at fixed offered loads, CPU per order, peak RSS. Flushes the Redis database of REDIS_URL (not db 0)."""
    from benchmarks.measure import Stalled
    from benchmarks.runner import BenchSettings, run

    overrides = {key: value for key, value in {"out_dir": out, "runs": runs}.items() if value is not None}
    settings = BenchSettings.quick(**overrides) if quick else BenchSettings(**overrides)
    offered = [float(rate) for rate in rates.split(",")] if rates else None
    try:
        result = run(settings, BusSettings().redis_url, offered, report=lambda text: console.print(f"[dim]{text}[/]"))
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    except (Stalled, RuntimeError) as exc:
        console.print(f"[red]benchmark aborted:[/] {exc}")
        raise typer.Exit(1) from None
    table = Table(title=f"shop bench ({'quick' if quick else 'full'}, {result['meta']['seconds']}s)")
    for column in ("mode", "orders/s", "runs", "worker CPU ms/order", "redis CPU ms/order", "peak RSS MiB/worker"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    latency = Table(title="placed -> notified, open loop (ms)")
    for column in ("mode", "rate/s", "p50", "p95", "p99", "max", "undone", "noise (cores)"):
        latency.add_column(column, justify="left" if column == "mode" else "right")
    for name, mode in result["modes"].items():
        if "runs" not in mode:
            table.add_row(name, "-", mode.get("skipped", ""), "-", "-", "-")
            continue
        table.add_row(name, f"{mode['throughput']:.1f}", " ".join(f"{run['throughput']:.0f}" for run in mode["runs"]),
                      f"{mode['cpu_ms_per_order']:.2f}", f"{mode['redis_cpu_ms_per_order']:.2f}",
                      f"{max(mode['peak_rss_mib'].values()):.0f}")
        for point in mode["latency"]:
            latency.add_row(name, f"{point['offered_rate']:g}", *(f"{point[key]:g}" for key in (
                "p50_ms", "p95_ms", "p99_ms", "max_ms", "incomplete", "foreign_cpu_share")))
    console.print(table)
    console.print(latency)
    for name, scaling in result.get("scaling", {}).items():
        console.print(f"scaling {name}: 1 payment worker {scaling['1']:.1f}/s, 2 payment workers {scaling['2']:.1f}/s")
    console.print(f"[bold]full / bare throughput: {result['ratio_full_over_bare']:.3f}[/] (median of per-pair ratios "
                  f"{result['ratio_runs']}); results in {settings.out_dir}")


@app.command()
def compare(
    quick: Annotated[bool, typer.Option("--quick", help="a small workload (for tests): every scenario, few orders")] = False,
    out: Annotated[Optional[Path], typer.Option(help="where compare.md and compare.json go (default: var/compare)")] = None,
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


# ---------------------------------------------------------------------------------------------------------------------
# Observability: the event catalogue, an order's journey, metrics
# ---------------------------------------------------------------------------------------------------------------------
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


@app.command()
def trace(order_id: Annotated[str, typer.Argument(help="the order id (every event of an order carries it as "
                                                         "correlation id)")]) -> None:
    """The order's journey across the services, from the event log: each event, who published it, what caused it and
    how long after its cause it was published."""
    from events.redis_bus import redis_client
    from shop.trace import journey

    hops = journey(redis_client(BusSettings()), order_id)
    if not hops:
        console.print(f"[red]no event of {order_id} in the event log[/] (wrong id, or older than the log keeps)")
        raise typer.Exit(1)
    handled_by = {model.type_name: [spec.name for spec in SERVICES.values() if model in spec.handlers]
                  for model in EVENT_TYPES.values()}
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


@app.command()
def metrics(
    serve: Annotated[bool, typer.Option("--serve", help="answer GET /metrics (SHOP_METRICS_HOST/PORT) until Ctrl-C")] = False,
) -> None:
    """Every service's counters (messages by outcome, failures, handler latency histogram), dead letters and queue
    depths, in Prometheus' text format: printed once, or served for a scraper."""
    from events.redis_bus import redis_client
    from shop.metrics import MetricsSettings, render
    from shop.metrics import serve as serve_metrics

    client = redis_client(BusSettings())
    if not serve:
        sys.stdout.write(render(client, SERVICES.values()))
        return
    settings = MetricsSettings()
    console.print(f"metrics on http://{settings.host}:{settings.port}/metrics  (Ctrl-C to stop)")
    try:
        serve_metrics(client, SERVICES.values(), settings.host, settings.port)
    except KeyboardInterrupt:
        pass
