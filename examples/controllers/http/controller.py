#!/usr/bin/env python3
"""A small REST controller for ansible-worker's HTTP transport.

Workers with `transport = "http"` and `[poll] base_url` pointing here poll
`GET /tasks`: the oldest queued request as a JSON object (an array of up to N
with --batch N or ?limit=N), each handed out once; 204 when none waits. They
post every status document to `POST /tasks/<task_id>/status`: kept in order,
one line on stderr each. For you: `POST /submit` queues a request (the JSON
of the MQTT transport; a task_id is made up when missing); `GET
/tasks/<task_id>` answers its latest status, `.../statuses` all, in order.
With POLL_TOKEN in the environment (never an argument: `ps` shows those),
every request needs `Authorization: Bearer <POLL_TOKEN>`, or gets 401.

--once PLAYBOOK -i INVENTORY queues one request, waits for its final status,
prints it as JSON and exits as `ansible-worker submit --wait` does: 0 success,
1 failed, 2 usage or listening error or no final status in time, 3 timeout,
4 cancelled. Python 3.11 standard library only, all in memory: a starting
point for a controller of your own.
"""

import argparse
import contextlib
import hmac
import json
import os
import sys
import threading
import uuid
from collections import deque
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EXIT_CODES = {"success": 0, "failed": 1, "timeout": 3, "cancelled": 4}
USAGE_OR_LISTENING = 2
MAX_BODY = 4 * 1024 * 1024  # above the worker's default max_request_size (1 MiB)


class Store:
    """The requests not handed out yet, and every status received."""

    def __init__(self):
        self.changed = threading.Condition()  # its lock guards both fields
        self.queue = deque()
        self.statuses = {}  # task_id -> [status document, ...] in arrival order

    def submit(self, request):
        with self.changed:
            self.queue.append(request)

    def take(self, limit):
        with self.changed:
            return [self.queue.popleft() for _ in range(min(limit, len(self.queue)))]

    def record(self, task_id, doc):
        with self.changed:
            self.statuses.setdefault(task_id, []).append(doc)

    def answered(self):  # wakes --once, after the worker got its answer
        with self.changed:
            self.changed.notify_all()

    def history(self, task_id):
        with self.changed:
            return list(self.statuses.get(task_id, []))

    def wait_final(self, task_id, timeout):
        """The first final status of `task_id`, or None after `timeout` s."""
        def final():
            return next((d for d in self.statuses.get(task_id, []) if d.get("state") in EXIT_CODES), None)
        with self.changed:
            self.changed.wait_for(final, timeout)
            return final()


def new_task_id(playbook):
    stem = os.path.splitext(os.path.basename(str(playbook)))[0] or "task"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stem}-{stamp}-{uuid.uuid4().hex[:6]}"


def log(line):
    print(line, file=sys.stderr, flush=True)


class Handler(BaseHTTPRequestHandler):
    """One HTTP request; the server carries `store`, `token` and `batch`."""

    protocol_version = "HTTP/1.1"  # keep-alive: a worker reuses its connection

    def do_GET(self):
        if not self.authorized():
            return
        path, _, query = self.path.partition("?")
        parts = path.strip("/").split("/")
        if parts == ["tasks"]:
            self.hand_out(dict(p.partition("=")[::2] for p in query.split("&")).get("limit"))
        elif len(parts) == 2 and parts[0] == "tasks":
            statuses = self.server.store.history(parts[1])
            self.reply(200, statuses[-1]) if statuses else self.reply(404, {"error": "no status yet"})
        elif len(parts) == 3 and parts[0] == "tasks" and parts[2] == "statuses":
            self.reply(200, self.server.store.history(parts[1]))
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        if not self.authorized() or (body := self.json_body()) is None:
            return
        parts = self.path.strip("/").split("/")
        if parts == ["submit"]:
            body = {"task_id": new_task_id(body.get("playbook")), **body}
            self.server.store.submit(body)
            log(f"queued {body['task_id']} ({body.get('playbook')})")
            self.reply(202, {"task_id": body["task_id"]}, {"Location": f"/tasks/{body['task_id']}"})
        elif len(parts) == 3 and parts[0] == "tasks" and parts[2] == "status":
            # Recorded before answering, so they stay in the worker's order.
            # The worker may post a status again (after a restart, or when an
            # answer got lost): each is a full snapshot, so a repeat is harmless.
            self.server.store.record(parts[1], body)
            worker = body.get("worker_id") or self.headers.get("X-Worker-Id", "?")
            log(f"status {parts[1]} {body.get('state', '?')} {worker}")
            self.reply(204, None)
            # Wakes --once only now that the worker has its 2xx for this status.
            self.server.store.answered()
        else:
            self.reply(404, {"error": "not found"})

    def hand_out(self, limit):
        """GET /tasks: the oldest waiting requests, each handed out once."""
        if limit is not None and not limit.isdigit():
            return self.reply(400, {"error": "limit must be a whole number"})
        batch = self.server.store.take(max(1, int(limit or self.server.batch)))
        if not batch:
            return self.reply(204, None)
        worker = f"{self.headers.get('X-Worker-Group', '?')}/{self.headers.get('X-Worker-Id', '?')}"
        for request in batch:
            log(f"handed {request.get('task_id')} to {worker}")
        as_array = limit is not None or self.server.batch > 1
        self.reply(200, batch if as_array else batch[0])

    def authorized(self):
        if not (token := self.server.token):
            return True
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return True
        self.close_connection = True  # the body, if any, is left unread
        self.reply(401, {"error": "missing or wrong bearer token"}, {"WWW-Authenticate": "Bearer"})
        return False

    def json_body(self):
        """The request body as a JSON object, or None once an error was sent."""
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_BODY:
            self.close_connection = True  # the body, if any, is left unread
            return self.reply(413, {"error": f"a Content-Length up to {MAX_BODY} is required"})
        try:
            body = json.loads(self.rfile.read(int(length)))
        except ValueError as e:
            return self.reply(400, {"error": f"body is not JSON: {e}"})
        if not isinstance(body, dict):
            return self.reply(400, {"error": "body must be a JSON object"})
        return body

    def reply(self, code, doc, headers=None):
        data = b"" if doc is None else (json.dumps(doc) + "\n").encode()  # a line for curl
        self.send_response(code)
        if code != 204:  # a 204 has neither a body nor a Content-Length
            headers = {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass  # a line per poll would drown the lines above


def json_object(text):
    value = json.loads(text)  # a ValueError becomes argparse's usage error
    if not isinstance(value, dict):
        raise ValueError
    return value


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="A REST controller for ansible-worker's HTTP transport (transport = \"http\").",
        epilog="With POLL_TOKEN set in the environment, every request needs "
        "'Authorization: Bearer <POLL_TOKEN>'.",
    )
    parser.add_argument("--listen", default="127.0.0.1:8000", metavar="IP:PORT",
                        help="where to listen (default: %(default)s; port 0 picks a free one)")
    parser.add_argument("--batch", type=int, default=1, metavar="N",
                        help="answer GET /tasks with an array of up to N requests (default: one object)")
    parser.add_argument("--once", metavar="PLAYBOOK",
                        help="queue one request for PLAYBOOK, wait for its final status and exit")
    parser.add_argument("-i", "--inventory", help="with --once: the request's inventory (required)")
    parser.add_argument("-e", "--extra-vars", type=json_object, default={}, metavar="JSON",
                        help="with --once: extra vars, a JSON object")
    parser.add_argument("--task-id", help="with --once (default: <playbook stem>-<UTC time>-<6 hex>)")
    parser.add_argument("--wait-timeout", type=float, default=3600, metavar="SECONDS",
                        help="with --once: give up after this long (default: %(default)s)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        parser.error("--listen must be IP:PORT")
    args.address = (host, int(port))
    if args.once and not args.inventory:
        parser.error("--once needs -i INVENTORY")
    return args


def main(argv):
    args = parse_args(argv)
    try:
        server = ThreadingHTTPServer(args.address, Handler)
    except OSError as e:
        log(f"cannot listen on {args.listen}: {e}")
        return USAGE_OR_LISTENING
    server.store, server.batch, server.token = Store(), args.batch, os.environ.get("POLL_TOKEN")
    host, port = server.server_address[:2]  # the port picked, with --listen IP:0
    log(f"listening on http://{host}:{port}" + (" (bearer token required)" if server.token else ""))
    if not args.once:
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
        return 0

    task_id = args.task_id or new_task_id(args.once)
    server.store.submit({"task_id": task_id, "playbook": args.once,
                         "inventory": args.inventory, "extra_vars": args.extra_vars})
    log(f"queued {task_id} ({args.once})")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        final = server.store.wait_final(task_id, args.wait_timeout)
    except KeyboardInterrupt:
        final = None
    server.shutdown()
    if final is None:
        log(f"no final status for {task_id} within {args.wait_timeout:g} s")
        return USAGE_OR_LISTENING
    if final.get("error_message"):
        log(f"error: {final['error_message']}")
    print(json.dumps(final, indent=2))
    return EXIT_CODES[final["state"]]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
