#!/usr/bin/env python3
"""A Tether device in one file of Python, written from PROTOCOL.md alone.

It is a (pretend) coffee machine. It

- logs in to the broker as its device id with its secret,
- declares its inbox (a broker-named, exclusive, auto-delete queue) and binds it to
  `tether.discover`,
- says hello on `tether.presence` with what it can do: the command `brew` (an
  argument, progress as it goes) and the metric `boiler_temp`,
- sends a heartbeat every `heartbeat_ms`,
- answers each command: `delivered` at once, `progress` per cup, then one `reply`,
- publishes a reading every few seconds (faster while someone watches it),
- stops a command when the server sends `cancel`,
- says `bye` and leaves when it gets SIGTERM (or Ctrl-C),
- reconnects, with a new session, when the connection drops.

Every message it publishes carries `user_id` = its device id (the broker checks it),
and it obeys only inbox messages whose `user_id` is a server account.

Run it (the secret comes from the environment, never the command line):

    TETHER_DEVICE_SECRET=… python3 device.py --amqp-url amqp://127.0.0.1:5673/%2f \
        --device-id coffee-1

It needs pika (Debian: `apt-get install python3-pika`; elsewhere `pip install pika`).
Everything runs on one thread: pika's BlockingConnection is pumped in a loop, and the
loop also does what is due (heartbeats, readings, the next step of each command).
"""

import argparse
import json
import logging
import math
import os
import random
import secrets
import signal
import ssl
import sys
import time
import urllib.parse

import pika
import pika.exceptions

log = logging.getLogger("coffee")

# The protocol's names (PROTOCOL.md, "Connection and topology").
PRESENCE = "tether.presence"
TELEMETRY = "tether.telemetry"
DISCOVER = "tether.discover"
VERSION = 1

# What this device announces in its hello. The server validates every command against
# it before sending it (and builds the UI's form from it); the device checks again.
CAPABILITIES = {
    "commands": [
        {
            "name": "brew",
            "description": "Brew some cups of coffee",
            "args": [
                {"name": "cups", "description": "how many", "type": "integer",
                 "min": 1, "max": 12, "required": True},
                {"name": "strength", "type": "choice", "choices": ["mild", "strong"],
                 "default": "mild"},
            ],
        },
    ],
    "metrics": [{"name": "boiler_temp", "unit": "°C", "min": 0, "max": 130}],
    # Every 5 s as a rule; as often as every 500 ms while someone watches.
    "reporting": {"interval_ms": 5000, "fastest_ms": 500},
}

# How long one cup takes (the `brew` command reports progress after each).
CUP_MS = 300
# How many command ids to remember, so that one delivered twice is never run twice.
REMEMBER = 256


def now_ms():
    return int(time.time() * 1000)


def time_left_ms(request):
    """PROTOCOL.md "Time": until the server's deadline_ms when it lies within timeout_ms
    from now by this clock; otherwise (no deadline, or clocks that disagree)
    timeout_ms from receipt."""
    budget = request["timeout_ms"]
    deadline = request.get("deadline_ms")
    now = now_ms()
    if isinstance(deadline, int) and now < deadline <= now + budget:
        return deadline - now
    return budget


def message(type_, **fields):
    """A protocol message: a JSON object with `v` and `type` beside its fields."""
    return json.dumps({"v": VERSION, "type": type_, **fields}).encode()


class Stop(Exception):
    """SIGTERM or Ctrl-C: say bye and leave."""


class Session:
    """One connection's life: a new session id, a new inbox, a hello. When the
    connection drops, the device makes a new Session; anything the old one was doing
    stops (the server has already written its commands off, see PROTOCOL.md)."""

    def __init__(self, device, connection):
        self.device = device
        self.connection = connection
        self.channel = connection.channel()
        # A new random session id on every connection (PROTOCOL.md, "Presence").
        self.session_id = secrets.token_hex(16)
        self.running = {}  # command id -> the command's state, while it runs
        self.leases = {}  # server replica -> (interval_ms, lease expiry, monotonic s)

        # 1. The exchanges must exist: a passive declare only checks. A device may not
        #    declare them; if one is missing no server has set this broker up yet, and
        #    the error (404) ends this session, to be retried later.
        for exchange, kind in ((PRESENCE, "topic"), (TELEMETRY, "topic"), (DISCOVER, "fanout")):
            self.channel.exchange_declare(exchange, exchange_type=kind, passive=True)
        # 2. The inbox: the broker names it; it lives exactly as long as this connection.
        declared = self.channel.queue_declare("", exclusive=True, auto_delete=True)
        self.inbox = declared.method.queue
        # 3. Servers that start later ask every inbox for a hello through this fanout
        #    exchange (the binding key of a fanout exchange is ignored: use "").
        self.channel.queue_bind(self.inbox, DISCOVER, routing_key="")
        # 4. Consume it, acknowledging each message ourselves.
        self.channel.basic_qos(prefetch_count=32)
        self.channel.basic_consume(self.inbox, self.on_inbox, auto_ack=False)
        # 5. Hello: the server now knows where to send commands.
        self.hello()
        now = time.monotonic()
        # The first heartbeat is due one interval after the hello (the hello counts).
        self.next_heartbeat = now + device.heartbeat_ms / 1000
        self.last_reading = now
        self.next_reading = now  # a first reading at once
        log.info("online: session %s, inbox %s", self.session_id, self.inbox)

    # --- publishing -------------------------------------------------------------------

    def publish(self, exchange, routing_key, body, correlation_id=None):
        """Every message is signed with user_id = our device id (the broker refuses any
        other); not persistent, no `mandatory`, no confirms: a lost heartbeat or reading
        is made good by the next one, and the server times out a lost answer."""
        properties = pika.BasicProperties(
            content_type="application/json",
            user_id=self.device.device_id,
            correlation_id=correlation_id,
        )
        self.channel.basic_publish(exchange, routing_key, body, properties)

    def presence(self, type_, **fields):
        key = f"presence.{self.device.device_id}.{type_}"
        body = message(type_, device_id=self.device.device_id, session_id=self.session_id, **fields)
        self.publish(PRESENCE, key, body)

    def hello(self):
        self.presence("hello", inbox=self.inbox, kind="coffee machine",
                      firmware=self.device.firmware, heartbeat_ms=self.device.heartbeat_ms,
                      capabilities=CAPABILITIES)

    def answer(self, command, type_, **fields):
        """delivered, progress or reply: to the command's reply_to queue, through the
        default exchange, with its correlation id and our current session id."""
        body = message(type_, command_id=command["id"], session_id=self.session_id, **fields)
        self.publish("", command["reply_to"], body, correlation_id=command["id"])

    def reading(self, metric, value):
        key = f"telemetry.{self.device.device_id}.{metric}"
        body = message("telemetry", device_id=self.device.device_id, session_id=self.session_id,
                       metric=metric, value=value, ts_ms=now_ms())
        self.publish(TELEMETRY, key, body)

    # --- the inbox --------------------------------------------------------------------

    def on_inbox(self, channel, deliver, properties, body):
        # Acknowledged on receipt, whatever it is: a command is never run twice anyway
        # (the ids we remember), and nothing bad can come back to us forever.
        channel.basic_ack(deliver.delivery_tag)
        # Obey only the servers: the default exchange lets any account put a message
        # into any queue whose name it knows, but the broker vouches for user_id.
        if properties.user_id not in self.device.server_accounts:
            log.warning("ignoring an inbox message from %r: not a server account", properties.user_id)
            return
        try:
            request = json.loads(body)
            kind = request["type"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring an inbox message that is not a protocol message")
            return
        if request.get("v") != VERSION:
            log.warning("ignoring a message of protocol version %r", request.get("v"))
            return
        handler = {
            "command": self.on_command,
            "cancel": self.on_cancel,
            "announce": lambda _request, _properties: self.hello(),
            "watch": self.on_watch,
            "unwatch": self.on_unwatch,
        }.get(kind)
        if handler is None:
            # A newer server's message this device does not know: ignore it.
            log.info("ignoring an inbox message of type %r", kind)
            return
        try:
            handler(request, properties)
        except (KeyError, TypeError, ValueError) as error:
            log.warning("ignoring a malformed %s: %r", kind, error)

    def on_command(self, request, properties):
        if not properties.reply_to:
            log.warning("ignoring a command without reply_to")
            return
        command = {
            "id": request["command_id"],
            "name": request["name"],
            "args": request.get("args", {}),
            "reply_to": properties.reply_to,
            # The budget counts from receipt; the server's deadline from the command's
            # creation, so this is a little generous, never short (PROTOCOL.md, "Time").
            "give_up_at": time.monotonic() + time_left_ms(request) / 1000,
        }
        # `delivered` first, before doing anything: the server then knows it arrived.
        self.answer(command, "delivered")

        recent = self.device.recent
        if command["id"] in recent:
            # Seen before (a redelivery): never run twice. If it ended, the same
            # outcome again; if it still runs, its one reply comes when it ends.
            outcome = recent[command["id"]]
            if outcome is not None:
                self.answer(command, "reply", outcome=outcome)
            elif command["id"] not in self.running:
                self.answer(command, "reply", outcome=error(
                    "failed", "cut short when the connection was lost; not run again"))
            return
        self.device.remember(command["id"], None)

        # The server checked the command against our capabilities; check again anyway.
        spec = next((c for c in CAPABILITIES["commands"] if c["name"] == command["name"]), None)
        if spec is None:
            return self.finish(command, error("unknown_command", f"unknown command {command['name']!r}"))
        problem = check_args(spec, command["args"])
        if problem:
            return self.finish(command, error("invalid_arguments", problem))
        if self.running:
            # One brew at a time.
            return self.finish(command, error("busy", "already brewing"))

        args = command["args"]
        command["cups"] = args["cups"]
        command["strength"] = args.get("strength", "mild")
        command["done"] = 0
        command["next_step"] = time.monotonic() + CUP_MS / 1000
        self.running[command["id"]] = command
        log.info("brewing %d %s cup(s) for command %s", command["cups"], command["strength"], command["id"])

    def on_cancel(self, request, properties):
        command = self.running.pop(request["command_id"], None)
        if command is None:
            return  # unknown or already finished: nothing to stop, nothing to say
        log.info("command %s cancelled after %d cup(s)", command["id"], command["done"])
        self.finish(command, error("cancelled", f"cancelled after {command['done']} cup(s)"))

    def on_watch(self, request, properties):
        # "Report every interval_ms for the next lease_ms", from one server replica;
        # sent again to renew. Several replicas may hold leases at once.
        self.leases[request["replica"]] = (request["interval_ms"],
                                           time.monotonic() + request["lease_ms"] / 1000)
        # A faster pace starts now: the next reading is due one new interval after the
        # last one (at once if that has passed).
        self.next_reading = min(self.next_reading, self.last_reading + self.interval_ms() / 1000)

    def on_unwatch(self, request, properties):
        self.leases.pop(request["replica"], None)

    # --- what is due ------------------------------------------------------------------

    def tick(self):
        """Does whatever is due now: a heartbeat, a reading, a step of each command."""
        now = time.monotonic()
        if now >= self.next_heartbeat:
            self.presence("heartbeat")
            self.next_heartbeat += self.device.heartbeat_ms / 1000
            if self.next_heartbeat < now:  # we were held up: do not send a burst
                self.next_heartbeat = now + self.device.heartbeat_ms / 1000
        if now >= self.next_reading:
            self.last_reading = now
            self.reading("boiler_temp", round(92 + 3 * math.sin(time.time() / 10) + random.uniform(-0.5, 0.5), 2))
            self.next_reading = now + self.interval_ms() / 1000
        for command in list(self.running.values()):
            if now >= command["give_up_at"]:
                # Past its timeout the server has reported `timed_out` and ignores us;
                # stop, and say why anyway.
                self.running.pop(command["id"])
                self.finish(command, error("failed", f"gave up after {command['done']} cup(s)"))
            elif now >= command["next_step"]:
                self.brew_one(command)

    def brew_one(self, command):
        command["done"] += 1
        done, cups = command["done"], command["cups"]
        if done < cups:
            self.answer(command, "progress", percent=done * 100 // cups,
                        message=f"cup {done} of {cups} poured")
            command["next_step"] += CUP_MS / 1000
        else:
            self.running.pop(command["id"])
            self.finish(command, {"status": "ok",
                                  "result": {"cups": cups, "strength": command["strength"]}})

    def finish(self, command, outcome):
        """A command's one reply, remembered in case the command comes again."""
        self.device.remember(command["id"], outcome)
        self.answer(command, "reply", outcome=outcome)

    def interval_ms(self):
        """The fastest pace an unexpired lease asks for, within what we announced."""
        now = time.monotonic()
        self.leases = {r: lease for r, lease in self.leases.items() if lease[1] > now}
        reporting = CAPABILITIES["reporting"]
        asked = min((interval for interval, _ in self.leases.values()), default=reporting["interval_ms"])
        return max(reporting["fastest_ms"], min(asked, reporting["interval_ms"]))

    def bye(self, reason):
        """Going away: say so, so that the server marks us offline now."""
        for command in list(self.running.values()):
            # Answer what we acknowledged before leaving (PROTOCOL.md, "A command's life").
            self.running.pop(command["id"])
            self.finish(command, error("failed", f"stopped ({reason}) after {command['done']} cup(s)"))
        self.presence("bye", reason=reason)


def error(code, text):
    return {"status": "error", "code": code, "message": text}


def check_args(spec, args):
    """The server's argument rules (PROTOCOL.md, "Capabilities"); an error text or None.
    Arguments arrive with defaults filled in."""
    if not isinstance(args, dict):
        return "args must be an object"
    known = {a["name"]: a for a in spec["args"]}
    for name in args:
        if name not in known:
            return f"unknown argument {name!r}"
    for name, rule in known.items():
        value = args.get(name)
        if value is None:
            if rule.get("required") and "default" not in rule:
                return f"missing required argument {name!r}"
            continue
        kind = rule["type"]
        if kind == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
            return f"argument {name!r} must be a whole number"
        if kind == "number" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            return f"argument {name!r} must be a number"
        if kind in ("integer", "number") and not (rule.get("min", value) <= value <= rule.get("max", value)):
            return f"argument {name!r} is {value}, out of range"
        if kind == "boolean" and not isinstance(value, bool):
            return f"argument {name!r} must be true or false"
        if kind == "string" and not isinstance(value, str):
            return f"argument {name!r} must be text"
        if kind == "string" and len(value) > rule.get("max_len", len(value)):
            return f"argument {name!r} is longer than {rule['max_len']} characters"
        if kind == "choice" and value not in rule["choices"]:
            return f"argument {name!r} must be one of {', '.join(rule['choices'])}"
    return None


class Device:
    """What outlives a connection: who we are, and the commands we were handed lately."""

    def __init__(self, options):
        self.device_id = options.device_id
        self.secret = options.secret
        self.urls = [u.strip() for u in options.amqp_url.split(",") if u.strip()]
        self.heartbeat_ms = options.heartbeat_ms
        self.firmware = options.firmware
        self.server_accounts = set(options.server_accounts.split(","))
        self.recent = {}  # command id -> its outcome, or None while it runs
        self.stopping = False

    def remember(self, command_id, outcome):
        self.recent.pop(command_id, None)
        self.recent[command_id] = outcome
        while len(self.recent) > REMEMBER:
            self.recent.pop(next(iter(self.recent)))  # the oldest (dicts keep order)

    def parameters(self):
        """pika's connection parameters for each broker URL (a cluster's nodes are tried
        in turn): the URL the server gave us at provisioning, with our own login."""
        result = []
        for url in self.urls:
            parsed = urllib.parse.urlsplit(url)
            tls = parsed.scheme == "amqps"
            result.append(pika.ConnectionParameters(
                host=parsed.hostname or "127.0.0.1",
                port=parsed.port or (5671 if tls else 5672),
                # The vhost is the URL's path, %-decoded ("/%2f" is "/"); "/" if none.
                virtual_host=urllib.parse.unquote(parsed.path[1:]) if len(parsed.path) > 1 else "/",
                credentials=pika.PlainCredentials(self.device_id, self.secret),
                ssl_options=pika.SSLOptions(ssl.create_default_context(), parsed.hostname) if tls else None,
                heartbeat=30,  # AMQP's own heartbeat, so a dead link is noticed
                connection_attempts=1,
                socket_timeout=10,
            ))
        return result

    def run(self):
        backoff = 0.5
        while not self.stopping:
            try:
                connection = pika.BlockingConnection(self.parameters())
            except pika.exceptions.ProbableAccessDeniedError:
                log.error("the broker refused %s: is it provisioned, and its secret right?", self.device_id)
                return 1
            except pika.exceptions.AMQPConnectionError as e:
                log.warning("cannot connect (%s); again in at most %.1f s", e, backoff)
                self.sleep(backoff)
                backoff = min(backoff * 2, 30)
                continue
            try:
                session = Session(self, connection)
                backoff = 0.5
                while not self.stopping:
                    connection.process_data_events(time_limit=0.05)
                    session.tick()
                session.bye("shutdown")
                connection.close()
                log.info("bye")
            except pika.exceptions.ChannelClosedByBroker as e:
                # e.g. 404 on the passive declare: no server has set the broker up yet.
                log.warning("the broker closed the channel: %s %s; again in at most %.1f s", e.reply_code, e.reply_text, backoff)
                self.close(connection)
                self.sleep(backoff)
                backoff = min(backoff * 2, 30)
            except pika.exceptions.AMQPError as e:
                log.warning("lost the connection (%r); reconnecting", e)
                self.close(connection)
                self.sleep(backoff)
                backoff = min(backoff * 2, 30)
        return 0

    def sleep(self, seconds):
        """Waits a random time between half and all of `seconds` (so that a fleet that
        lost its broker does not come back all at once), or less if stopped."""
        end = time.monotonic() + seconds * random.uniform(0.5, 1.0)
        while not self.stopping and time.monotonic() < end:
            time.sleep(0.05)

    @staticmethod
    def close(connection):
        try:
            if connection.is_open:
                connection.close()
        except pika.exceptions.AMQPError:
            pass


def main():
    parser = argparse.ArgumentParser(description="A Tether device (a pretend coffee machine) on pika.")
    parser.add_argument("--amqp-url", default=os.environ.get("TETHER_AMQP_URL", "amqp://127.0.0.1:5673/%2f"),
                        help="the broker (comma-separated for a cluster), without a login (TETHER_AMQP_URL)")
    parser.add_argument("--device-id", default=os.environ.get("TETHER_DEVICE_ID"), required="TETHER_DEVICE_ID" not in os.environ)
    parser.add_argument("--heartbeat-ms", type=int, default=5000)
    parser.add_argument("--firmware", default="0.1.0")
    parser.add_argument("--server-accounts", default=os.environ.get("TETHER_SERVER_ACCOUNTS", "tether-server"),
                        help="the accounts whose inbox messages it obeys, comma-separated")
    options = parser.parse_args()
    options.secret = os.environ.get("TETHER_DEVICE_SECRET")
    if not options.secret:
        parser.error("set TETHER_DEVICE_SECRET to the device's secret")
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s")
    # pika logs every failed attempt at length; the device says what happened itself.
    logging.getLogger("pika").setLevel(logging.CRITICAL)

    device = Device(options)

    def stop(signum, _frame):
        log.info("signal %d: stopping", signum)
        device.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.exit(device.run())


if __name__ == "__main__":
    main()
