"""`shop demo`: start everything, register a few users, stock a few products, place sample orders (confirmed; one
refused for stock; one declined, its stock released) and follow the notification log until each customer is told."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx

from events.settings import BusSettings
from notification_service.notification_log import read_notifications
from notification_service.service import NotificationSettings
from shop.client import bearer, place_order, register, sign_in, stock, wait_for_api
from shop.console.app import ConsoleSettings
from shop.console.run import start_console
from shop.processes import start_everything
from shop.seeding import NewProduct, seed_products_over_http
from shop.services import APIS

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


DEMO_ADMIN = "admin@shop.example"


def demo_admin_password(var_dir: Path) -> str:
    """The demo's admin password: made once per var directory, kept in a file only its owner reads."""
    path = var_dir / "demo-admin-password"
    if not path.exists():
        var_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(18))
        path.chmod(0o600)
    return path.read_text().strip()


def run_demo(
    say: Callable[[str], None], show_notification: Callable[[dict[str, Any]], None], timeout: float = 60.0,
    keep_running: bool = False, with_console: bool = True,
) -> bool:
    """Returns False when some sample order was not notified within `timeout` seconds."""
    settings = BusSettings()
    os.environ.setdefault("SHOP_LOG_MESSAGES", "false")  # the workers' per-message lines would bury the story
    # The console's poison orders (a charge that kills the payment worker, as `shop chaos` injects them): a demo is a
    # throwaway playground, never production; two deliveries that never finish make a message poison, as in chaos.
    os.environ.setdefault("SHOP_FAULT_INJECTION", "1")
    os.environ.setdefault("SHOP_MAX_DELIVERIES", "2")
    admin_password = demo_admin_password(settings.var_dir)
    os.environ.setdefault("SHOP_ADMIN_EMAIL", DEMO_ADMIN)  # the user API registers this admin when it starts
    os.environ.setdefault("SHOP_ADMIN_PASSWORD", admin_password)
    supervisor, embedded = start_everything(settings.var_dir, report=lambda text: say(f"[dim]up:[/] {text}"), demo=True)
    stop_console = start_console(supervisor, lambda text: say(f"[dim]up:[/] {text}")) if with_console else None
    try:
        urls = {service: api.settings().base_url for service, api in APIS.items()}
        for url in urls.values():
            wait_for_api(url, timeout=30)
        order_url, product_url, user_url = urls["order_service"], urls["product_service"], urls["user_service"]
        admin_token, _ = sign_in(user_url, os.environ["SHOP_ADMIN_EMAIL"], os.environ["SHOP_ADMIN_PASSWORD"])
        seed_products_over_http(product_url, order_url, SAMPLE_PRODUCTS, admin_token)
        say("products: " + ", ".join(f"{p.name} {p.price} ({stock(product_url, p.id)} in stock)"
                                     for p in SAMPLE_PRODUCTS))
        run = uuid4().hex[:4]  # a fresh address per run: a second demo on the same stores registers new users
        tokens = {}
        for handle, name in SAMPLE_USERS.items():
            email, password = f"{handle}+{run}@example.com", secrets.token_urlsafe(12)
            register(user_url, name, email, password)
            tokens[handle], _ = sign_in(user_url, email, password)
        say(f"registered and signed in {', '.join(SAMPLE_USERS.values())}")
        placed = {}
        for handle, lines, method in SAMPLE_ORDERS:
            order = place_order(order_url, tokens[handle], lines, method)
            placed[order["id"]] = (order, tokens[handle])
            say(f"placed [bold]{order['id'][:8]}[/] for {SAMPLE_USERS[handle]}: "
                f"{', '.join(f'{q} x {p}' for p, q in lines)}, total {order['total']} by {method}")
        log_path = NotificationSettings().notification_log
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < len(placed) and time.monotonic() < deadline:
            supervisor.poll()
            for line in read_notifications(log_path):
                if line["order_id"] in placed and line["order_id"] not in seen:
                    seen.add(line["order_id"])
                    show_notification(line)
            time.sleep(0.1)
        if len(seen) < len(placed):
            say(f"[red]only {len(seen)} of {len(placed)} orders were notified within {timeout}s[/]")
            return False
        for order_id, (_, token) in placed.items():
            order = httpx.get(f"{order_url}/orders/{order_id}", headers=bearer(token), timeout=10).json()
            say(f"order {order_id[:8]} is [bold]{order['status']}[/]"
                + (f" ({order['reason']})" if order.get("reason") else ""))
        say("stock now: " + ", ".join(f"{p.name} {stock(product_url, p.id)}" for p in SAMPLE_PRODUCTS)
            + "  (the declined chair is back on the shelf)")
        say(f"[green]all {len(placed)} sample orders notified[/]; log: {log_path}")
        say(f"admin: {os.environ['SHOP_ADMIN_EMAIL']} (password in {settings.var_dir / 'demo-admin-password'})")
        if keep_running:
            where = f"the console on {ConsoleSettings().base_url}, " if stop_console else ""
            say(f"still up (Ctrl-C to stop); try {where}`shop order place` or `shop logs -f` in another terminal")
            supervisor.run_forever()
        return True
    finally:
        if stop_console:
            stop_console()
        supervisor.stop()
        if embedded:
            embedded.stop()
