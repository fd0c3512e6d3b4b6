# ansible-worker's callback plugin: streams a run's progress as JSON lines.
#
# The worker writes this file as `ansible_worker.py` into a directory named by
# ANSIBLE_CALLBACK_PLUGINS, enables it with ANSIBLE_CALLBACKS_ENABLED and points
# ANSIBLE_WORKER_EVENTS at a FIFO it already holds open for reading. Each event
# is one JSON object on one line, written with a single os.write call:
#
#   {"kind": "task_start", "name": str, "play": str|null, "handler": bool}
#   {"kind": "result", "status": "ok"|"failed"|"skipped"|"unreachable",
#    "host": str, "task": str, "changed": bool, "ignored": bool,
#    "rescuable": bool, "msg": str|null}
#   {"kind": "set_stats", "hosts": [str]|null, "data": {...}}
#   {"kind": "stats", "hosts": {host: {"ok", "changed", "failures",
#    "unreachable", "skipped", "rescued", "ignored"}},
#    "custom_run": {...}, "custom_per_host": {host: {...}}}
#   {"kind": "no_hosts"}
#
# A set_stats event is one set_stats result as it arrives (each loop item
# apart), with the hosts Ansible applies it to (null: the global data), so
# the worker can merge them in order, later keys winning. The stats event's
# custom data is Ansible's own aggregation (strings concatenated, numbers
# added); the worker only falls back on it for what no set_stats event
# showed (a no_log task's result is censored before callbacks see it).
#
# The worker's run/events module turns these lines into the run's counters. The plugin
# never raises out of a hook: a broken pipe must not break the playbook.
from __future__ import annotations

DOCUMENTATION = """
    name: ansible_worker
    type: notification
    short_description: Streams run events to ansible-worker as JSON lines
    description:
      - Writes one JSON object per line to the FIFO named by ANSIBLE_WORKER_EVENTS.
      - Does nothing when that variable is not set.
    requirements:
      - enable in configuration
"""

import json
import os

from ansible.plugins.callback import CallbackBase

EVENTS_PATH_ENV = "ANSIBLE_WORKER_EVENTS"
MSG_LIMIT = 1000
META_ACTIONS = ("meta", "ansible.builtin.meta", "ansible.legacy.meta")
NO_LOG_MSG = "the output has been hidden due to the fact that 'no_log: true' was specified for this result"

# The one fd of the FIFO, shared by every instance of the plugin and closed in
# forked children: Ansible's workers fork from the main process, and a worker
# orphaned by a SIGKILL must not keep the worker's pipe open.
_fd = None
_fork_hook_registered = False


def _close_in_child():
    global _fd
    fd, _fd = _fd, None
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def _open_events():
    """Opens the FIFO once; returns False when events are disabled."""
    global _fd, _fork_hook_registered
    if _fd is not None:
        return True
    path = os.environ.get(EVENTS_PATH_ENV)
    if not path:
        return False
    # O_NONBLOCK so that a FIFO without a reader fails (ENXIO) instead of
    # hanging the playbook; writes are blocking again afterwards, so a slow
    # reader applies back-pressure instead of losing events.
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    os.set_blocking(fd, True)
    _fd = fd
    if not _fork_hook_registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_close_in_child)
        _fork_hook_registered = True
    return True


def _json_safe(value):
    """A copy of value that json.dumps accepts: str keys, finite floats."""
    if isinstance(value, dict):
        return dict((str(k), _json_safe(v)) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float) and value == value and value not in (float("inf"), float("-inf")):
        return value
    return str(value)


def _encode(event):
    try:
        line = json.dumps(event, default=str, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        line = json.dumps(_json_safe(event), default=str, ensure_ascii=False, allow_nan=False)
    return (line + "\n").encode("utf-8", "replace")


def _emit(event):
    global _fd
    fd = _fd
    if fd is None:
        return
    try:
        data = _encode(event)
    except Exception:
        return
    try:
        # A blocking pipe write only returns short when interrupted.
        while data:
            written = os.write(fd, data)
            data = data[written:]
    except OSError:
        # The reader is gone (EPIPE): stop writing rather than fail the
        # playbook.
        if _fd == fd:
            _fd = None
            try:
                os.close(fd)
            except OSError:
                pass


def _attr(obj, name, default=None):
    """result.host (2.19+) or result._host (older cores)."""
    value = getattr(obj, name, None)
    if value is None:
        value = getattr(obj, "_" + name, default)
    return value


def _truncate(text):
    if text is None:
        return None
    if not isinstance(text, str):
        try:
            text = json.dumps(text, default=str, ensure_ascii=False)
        except Exception:
            text = repr(text)
    text = text.strip()
    if len(text) > MSG_LIMIT:
        text = text[: MSG_LIMIT - 3] + "..."
    return text


def _result_msg(data):
    """Ansible's msg for a failed or unreachable result, else a fallback."""
    if not isinstance(data, dict):
        return _truncate(data)
    if data.get("_ansible_no_log"):
        return NO_LOG_MSG
    item_msg = None
    for item in data.get("results") or ():
        if isinstance(item, dict) and (item.get("failed") or item.get("unreachable")):
            item_msg = _result_msg(item)
            break
    for key in ("msg", "stderr", "reason", "exception"):
        value = data.get(key)
        if value:
            if item_msg and isinstance(value, str):
                # A loop's msg is only "One or more items failed".
                return _truncate("%s: %s" % (value, item_msg))
            return _truncate(value)
    if item_msg:
        return item_msg
    shown = dict((k, v) for k, v in data.items() if not str(k).startswith("_ansible"))
    return _truncate(shown) or None


def _same(a, b):
    if a is b:
        return True
    uuid = getattr(a, "_uuid", None)
    return uuid is not None and uuid == getattr(b, "_uuid", None)


def _rescuable(task):
    """True when an enclosing block would rescue a failure of this task.

    Mirrors PlayIterator.is_any_block_rescuing: a block rescues failures of
    the tasks in its `block` section (at any depth) when it has a non-empty
    `rescue`; a failure in its rescue or always section goes to outer blocks.
    """
    child = task
    parent = getattr(task, "_parent", None)
    depth = 0
    while parent is not None and depth < 100:
        depth += 1
        rescue = getattr(parent, "rescue", None)
        always = getattr(parent, "always", None)
        if isinstance(rescue, list) or isinstance(always, list):
            in_rescue = any(_same(child, t) for t in (rescue or ()))
            in_always = any(_same(child, t) for t in (always or ()))
            if rescue and not in_rescue and not in_always:
                return True
        child = parent
        parent = getattr(parent, "_parent", None)
    return False


class CallbackModule(CallbackBase):
    """Writes task starts, results and the final stats to ansible-worker."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "ansible_worker"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._tasks_started = set()
        self._handlers_started = set()
        self._play = None
        self._unreachable = set()
        try:
            self._enabled = _open_events()
        except Exception as e:
            self._enabled = False
            try:
                self._display.warning("ansible_worker callback: cannot open %s: %s" % (EVENTS_PATH_ENV, e))
            except Exception:
                pass

    # -- tasks ---------------------------------------------------------------

    def _task_start(self, task, handler):
        if not self._enabled:
            return
        try:
            # Ansible's own flush_handlers/role_complete steps are not tasks
            # the user wrote (2.19 does not announce them; be sure anyway).
            if getattr(task, "implicit", False):
                return
            # 2.19 announces a meta task once per host, and the free strategy
            # every task once per host: count each task once. A handler counts
            # again only after a new task started (the next flush).
            uuid = getattr(task, "_uuid", None)
            if uuid is not None:
                if handler:
                    if uuid in self._handlers_started:
                        return
                    self._handlers_started.add(uuid)
                else:
                    if uuid in self._tasks_started:
                        return
                    self._tasks_started.add(uuid)
                    self._handlers_started.clear()
            name = task.get_name().strip()
            _emit({"kind": "task_start", "name": name, "play": self._play_name(), "handler": bool(handler)})
        except Exception:
            pass

    def _play_name(self):
        try:
            return self._play.get_name().strip() if self._play is not None else None
        except Exception:
            return None

    def v2_playbook_on_play_start(self, play):
        self._tasks_started.clear()
        self._handlers_started.clear()
        self._play = play

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_start(task, False)

    def v2_playbook_on_handler_task_start(self, task):
        self._task_start(task, True)

    def v2_playbook_on_no_hosts_matched(self):
        if self._enabled:
            _emit({"kind": "no_hosts"})

    # -- results -------------------------------------------------------------

    def _result(self, result, status, ignore_errors=False):
        if not self._enabled:
            return
        try:
            task = _attr(result, "task")
            # Meta results never reach the recap; counting them would make
            # live counters disagree with the final stats.
            if task is not None and getattr(task, "action", None) in META_ACTIONS:
                return
            host = _attr(result, "host")
            data = _attr(result, "result", {}) or {}
            # get_name() carries the role prefix ("web : Install"), as in the
            # task_start event and Ansible's own log.
            task_name = None
            if task is not None:
                task_name = task.get_name()
            if not task_name:
                task_name = getattr(result, "task_name", None)
            changed = bool(isinstance(data, dict) and data.get("changed"))
            ignored = False
            rescuable = False
            msg = None
            if status == "failed":
                ignored = bool(ignore_errors)
                rescuable = not ignored and task is not None and _rescuable(task)
                msg = _result_msg(data)
            elif status == "unreachable":
                ignored = bool(task is not None and getattr(task, "ignore_unreachable", False))
                msg = _result_msg(data)
            _emit({
                "kind": "result",
                "status": status,
                "host": host.get_name() if host is not None else None,
                "task": (task_name or "").strip(),
                "changed": changed,
                "ignored": ignored,
                "rescuable": rescuable,
                "msg": msg,
            })
        except Exception:
            pass

    def v2_runner_on_ok(self, result):
        self._result(result, "ok")
        self._set_stats(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result(result, "failed", ignore_errors)

    def v2_runner_on_skipped(self, result):
        self._result(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._result(result, "unreachable")
        try:
            task = _attr(result, "task")
            host = _attr(result, "host")
            if host is not None and not getattr(task, "ignore_unreachable", False):
                self._unreachable.add(host.get_name())
        except Exception:
            pass

    # -- set_stats -------------------------------------------------------------

    def _set_stats(self, result):
        """One set_stats event per result (or loop item) carrying ansible_stats.

        Mirrors StrategyBase._process_pending_results: any ok result with
        non-empty ansible_stats data counts; per_host (default true there)
        applies to the task's hosts, which for run_once are all hosts of the
        play's batch that were not unreachable.
        """
        if not self._enabled:
            return
        try:
            task = _attr(result, "task")
            host = _attr(result, "host")
            data = _attr(result, "result", {}) or {}
            if not isinstance(data, dict):
                return
            looped = task is not None and (getattr(task, "loop", None) or getattr(task, "loop_with", None))
            items = data.get("results") if looped else [data]
            for item in items or ():
                stats = item.get("ansible_stats") if isinstance(item, dict) else None
                if not isinstance(stats, dict) or not stats.get("data"):
                    continue
                hosts = None
                if "per_host" not in stats or stats["per_host"]:
                    hosts = self._task_hosts(task, host)
                _emit({"kind": "set_stats", "hosts": hosts, "data": stats["data"]})
        except Exception:
            pass

    def _task_hosts(self, task, host):
        """StrategyBase.get_task_hosts, from the callback's side."""
        name = host.get_name() if host is not None else None
        if task is not None and getattr(task, "run_once", False) and self._play is not None:
            try:
                play = self._play
                inventory = play.get_variable_manager()._inventory
                hosts = [h.name for h in inventory.get_hosts(play.hosts, order=play.order)]
                return [h for h in hosts if h not in self._unreachable]
            except Exception:
                pass
        return [name] if name is not None else []

    # -- the end -------------------------------------------------------------

    def v2_playbook_on_stats(self, stats):
        if not self._enabled:
            return
        try:
            hosts = {}
            for host in sorted(stats.processed):
                hosts[host] = stats.summarize(host)
            custom = getattr(stats, "custom", None) or {}
            custom_run = custom.get("_run") or {}
            per_host = dict((h, v) for h, v in custom.items() if h != "_run")
            _emit({
                "kind": "stats",
                "hosts": hosts,
                "custom_run": custom_run,
                "custom_per_host": per_host,
            })
        except Exception:
            pass
