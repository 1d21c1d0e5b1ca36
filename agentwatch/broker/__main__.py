"""``python -m agentwatch.broker -- COMMAND...``: run a command with a throw-away local Kafka.

Sets ``KAFKA_BOOTSTRAP_SERVERS`` for the command and stops the broker when it ends, whatever its outcome; when
``KAFKA_BOOTSTRAP_SERVERS`` is already set, the command simply runs against that broker. ``make bench`` uses it so
the Kafka benchmarks work on a fresh machine.
"""

from __future__ import annotations

import os
import subprocess
import sys

from agentwatch.broker.launcher import LocalKafka
from agentwatch.config import Settings

USAGE = """usage: python -m agentwatch.broker [--] COMMAND [ARG...]

Run COMMAND with a throw-away local Kafka broker: KAFKA_BOOTSTRAP_SERVERS is set for it, and the broker (a fresh
data directory, free ports) is stopped and deleted when COMMAND ends, whatever its outcome. When
KAFKA_BOOTSTRAP_SERVERS is already set, COMMAND simply runs against that broker. The exit status is COMMAND's.
Example: python -m agentwatch.broker -- pytest -m kafka

For a broker that outlives one command, use `agentwatch broker start|stop|status`."""


def main(argv: list[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if command[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print(USAGE, file=sys.stderr)
        return 2
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return subprocess.call(command)

    def progress(message: str) -> None:
        print(f"[kafka] {message}", file=sys.stderr, flush=True)

    with LocalKafka(Settings.from_env().home, progress=progress) as kafka:
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers}
        return subprocess.call(command, env=env)


if __name__ == "__main__":
    sys.exit(main())
