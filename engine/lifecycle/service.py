"""The Lifecycle gRPC service of the main server: the delivery log (ListNotifications) and
subscriber contact preferences."""

from __future__ import annotations

from tollgate.engine.errors import InvalidArgument
from tollgate.engine.lifecycle import contacts
from tollgate.engine.lifecycle.outbox import list_notifications
from tollgate.engine.rating.plans import check_id
from tollgate.engine.storage.store import Store
from tollgate.v1 import lifecycle_pb2 as lpb

LIFECYCLE = lpb.DESCRIPTOR.services_by_name["Lifecycle"]
MAX_LIST = 1000


class LifecycleApi:
    """Each RPC checks its request, then reads or writes Redis; errors are engine errors
    (the server maps them to gRPC status codes)."""

    def __init__(self, store: Store, max_id_length: int = 256) -> None:
        self.store = store
        self.max_id = max_id_length

    async def list_notifications(self, req: lpb.ListNotificationsRequest
                                 ) -> lpb.ListNotificationsAnswer:
        check_id("subscriber_id", req.subscriber_id, self.max_id)
        if req.limit > MAX_LIST:
            raise InvalidArgument(f"limit {req.limit} is over {MAX_LIST}")
        found = await list_notifications(self.store.redis, req.subscriber_id,
                                         req.limit or 100)
        return lpb.ListNotificationsAnswer(notifications=found)

    async def set_preferences(self, req: lpb.Preferences) -> lpb.Preferences:
        check_id("subscriber_id", req.subscriber_id, self.max_id)
        await self.store.get_subscriber(req.subscriber_id)  # NotFound for an unknown one
        await contacts.save(self.store.redis, req)
        return await contacts.load(self.store.redis, req.subscriber_id)

    async def get_preferences(self, req: lpb.GetPreferencesRequest) -> lpb.Preferences:
        check_id("subscriber_id", req.subscriber_id, self.max_id)
        return await contacts.load(self.store.redis, req.subscriber_id)

