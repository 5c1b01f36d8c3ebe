"""The long-running processes of the shop, as `shop` command lines.

One list for both ways of running it: `shop up` supervises these (through `shop_command`, which runs the same CLI
with the current interpreter) and docker-compose.yml runs each one as a container. A test holds the two together.
"""

from __future__ import annotations

from shop.services import APIS, CONSUMERS


def shop_processes() -> dict[str, list[str]]:
    """{process name: argv starting with `shop`}: one worker per event-consuming service (named after it), then one
    API per service that has one (`order_api`, ...)."""
    processes = {name: ["shop", "worker", name] for name in CONSUMERS}
    processes.update({api.process_name: ["shop", "api", service] for service, api in APIS.items()})
    return processes


def supervised_commands() -> dict[str, list[str]]:
    """What `shop up` hands its supervisor: the same processes, each run as `python -m shop ...` so the children use
    the interpreter (and virtualenv) of the parent even when the `shop` script is not on PATH."""
    from shop.supervisor import shop_command

    return {name: shop_command(*argv[1:]) for name, argv in shop_processes().items()}
