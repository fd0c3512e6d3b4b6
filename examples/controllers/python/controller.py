#!/usr/bin/env python3
"""Submit one task to an ansible-worker group over MQTT 5 and wait for its end.

The request carries the MQTT 5 properties Response Topic and Correlation
Data: the worker sends every status document of the task to that topic with
the Correlation Data copied back, so this controller follows its own task
without subscribing to the worker's topics, and tells its replies from any
other on the same topic.

Progress goes to stderr, one line per status; the final status document goes
to stdout as JSON. Exit codes as `ansible-worker submit --wait`: 0 success,
1 failed, 2 usage or connection error or no final status in time, 3 timeout,
4 cancelled.

Needs paho-mqtt 2: pip install 'paho-mqtt>=2,<3'
"""

import argparse
import json
import os
import sys
import threading
import uuid
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

EXIT_CODES = {"success": 0, "failed": 1, "timeout": 3, "cancelled": 4}
USAGE_OR_CONNECTION = 2


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Run a playbook on an ansible-worker group and wait for its final status.",
        epilog="The password, if any, is read from the MQTT_PASSWORD environment variable "
        "(never from the command line, where `ps` shows it).",
    )
    parser.add_argument("playbook", help="path relative to the worker's playbook_directory, e.g. hello.yml")
    parser.add_argument("-i", "--inventory", required=True,
                        help="inventory path relative to the playbook directory, or a host list such as 'web1,web2,'")
    parser.add_argument("-e", "--extra-vars", default="{}", metavar="JSON", help="extra vars as a JSON object")
    parser.add_argument("--host", default="127.0.0.1", help="broker host (default: %(default)s)")
    parser.add_argument("--port", type=int, default=1883, help="broker port (default: %(default)s)")
    parser.add_argument("--username", help="broker login; the password comes from MQTT_PASSWORD")
    parser.add_argument("--cafile", help="connect with TLS, trusting this CA file (PEM)")
    parser.add_argument("--prefix", default="ansible", help="worker.topic_prefix (default: %(default)s)")
    parser.add_argument("--group", default="lab", help="worker.group_name (default: %(default)s)")
    parser.add_argument("--task-id",
                        help="default: <playbook stem>-<UTC time>-<6 hex>. An id the worker already holds "
                        "is not run again: the worker answers with the task's current status once (its "
                        "later statuses go to the first request's Response Topic), so repeating a "
                        "finished task's command prints its final status")
    parser.add_argument("--response-topic",
                        help="where the statuses come back; default: replies/<client id>. It must lie "
                        "outside <prefix>/<group>/ and must not start with $ (the worker ignores it there)")
    parser.add_argument("--wait-timeout", type=float, default=3600, metavar="SECONDS",
                        help="give up after this long (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        args.extra_vars = json.loads(args.extra_vars)
    except json.JSONDecodeError as e:
        parser.error(f"--extra-vars is not JSON: {e}")
    if not isinstance(args.extra_vars, dict):
        parser.error("--extra-vars must be a JSON object")
    return args


def default_task_id(playbook):
    stem = os.path.splitext(os.path.basename(playbook))[0] or "task"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stem}-{stamp}-{uuid.uuid4().hex[:6]}"


def progress_line(doc):
    counters = " ".join(
        f"{name}={doc.get('tasks_' + name, 0)}"
        for name in ("total", "ok", "changed", "failed", "skipped", "unreachable")
    )
    return f"{doc.get('state', '?'):<9} {counters}"


class Controller:
    """One request, its replies, and the final status once it arrives."""

    def __init__(self, args):
        self.args = args
        self.task_id = args.task_id or default_task_id(args.playbook)
        self.client_id = f"controller-{uuid.uuid4().hex[:12]}"
        self.response_topic = args.response_topic or f"replies/{self.client_id}"
        # Tells this request's replies from any other on the response topic.
        self.correlation = uuid.uuid4().bytes
        self.request = {
            "task_id": self.task_id,
            "playbook": args.playbook,
            "inventory": args.inventory,
            "extra_vars": args.extra_vars,
        }
        self.final = None
        self.error = None
        self.done = threading.Event()

        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=mqtt.MQTTv5)
        if args.username:
            self.client.username_pw_set(args.username, os.environ.get("MQTT_PASSWORD"))
        if args.cafile:
            self.client.tls_set(ca_certs=args.cafile)
        self.client.on_connect = self.on_connect
        self.client.on_subscribe = self.on_subscribe
        self.client.on_message = self.on_message

    def run(self):
        """Connects, publishes the request and waits; returns the exit code."""
        try:
            self.client.connect(self.args.host, self.args.port, keepalive=30, clean_start=True)
        except OSError as e:
            print(f"cannot connect to {self.args.host}:{self.args.port}: {e}", file=sys.stderr)
            return USAGE_OR_CONNECTION
        self.client.loop_start()
        try:
            if not self.done.wait(self.args.wait_timeout):
                self.error = f"no final status for {self.task_id} within {self.args.wait_timeout:g} s"
        except KeyboardInterrupt:
            self.error = "interrupted"
        self.client.disconnect()
        self.client.loop_stop()
        if self.error:
            print(self.error, file=sys.stderr)
            return USAGE_OR_CONNECTION
        print(json.dumps(self.final, indent=2))
        return EXIT_CODES.get(self.final.get("state"), USAGE_OR_CONNECTION)

    def fail(self, message):
        self.error = message
        self.done.set()

    def on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.fail(f"the broker refused the connection: {reason_code}")
            return
        # After a reconnect too: replies are not retained, so one sent while
        # the connection was down is lost. The request is sent again below;
        # the worker runs a task id only once and answers a repeated request
        # with the task's current status.
        client.subscribe(self.response_topic, qos=1)

    def on_subscribe(self, client, userdata, mid, reason_code_list, properties):
        if reason_code_list[0].is_failure:
            self.fail(f"the broker refused the subscription to {self.response_topic}: {reason_code_list[0]}")
            return
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.response_topic
        props.CorrelationData = self.correlation
        topic = f"{self.args.prefix}/{self.args.group}/tasks"
        client.publish(topic, json.dumps(self.request), qos=2, properties=props)
        print(f"submitted {self.task_id} to {topic}; replies on {self.response_topic}", file=sys.stderr)

    def on_message(self, client, userdata, message):
        if getattr(message.properties, "CorrelationData", None) != self.correlation:
            return
        try:
            doc = json.loads(message.payload)
        except ValueError:
            return
        if not isinstance(doc, dict) or doc.get("task_id") != self.task_id:
            return
        print(progress_line(doc), file=sys.stderr)
        if doc.get("state") in EXIT_CODES:
            if doc.get("error_message"):
                print(f"error: {doc['error_message']}", file=sys.stderr)
            self.final = doc
            self.done.set()


def main(argv):
    return Controller(parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
