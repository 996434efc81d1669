"""The one bootstrap: the only code that knows which adapter stands behind each port. It builds
the adapters and services the settings call for, and closes them in reverse order."""

from app.bootstrap.event_log import (
    EventLogHost,
    check_data_dir,
    check_redis_url,
    copy_event_log,
    hosted_event_log,
    redis_target,
    resolve_event_log,
)
from app.bootstrap.index_side import (
    IndexSide,
    build_index_side,
    consumer_name,
    held_index_side,
    index_id,
)
from app.bootstrap.services import (
    Services,
    build_access,
    build_services,
    build_worker,
    load_keys,
    open_dead_letters,
)

__all__ = [
    "EventLogHost",
    "IndexSide",
    "Services",
    "build_access",
    "build_index_side",
    "build_services",
    "build_worker",
    "check_data_dir",
    "check_redis_url",
    "consumer_name",
    "copy_event_log",
    "held_index_side",
    "hosted_event_log",
    "index_id",
    "load_keys",
    "open_dead_letters",
    "redis_target",
    "resolve_event_log",
]
