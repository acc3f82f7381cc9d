"""Turns an event (or a campaign signal) into messages: the rule's channels for the subscriber,
the template in its locale, quiet hours in its time zone, opt-outs, and add-on offers; then
queues them once per key in the outbox."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from tollgate.engine.domain import Plan
from tollgate.engine.errors import NotFound
from tollgate.engine.lifecycle import contacts, results
from tollgate.engine.lifecycle.offers import make_offer
from tollgate.engine.lifecycle.outbox import DAY_MS, Outbox
from tollgate.engine.lifecycle.rules import channels_for, pick_template, quiet_until, render
from tollgate.engine.lifecycle.settings import Campaign, Rule, Settings
from tollgate.engine.storage.store import Store
from tollgate.engine.web.auth import SelfLinks
from tollgate.v1 import events_pb2

SELF_LINK = "self_link"
"""The template value of the subscriber's signed self-service link."""


class Notifier:
    def __init__(self, store: Store, outbox: Outbox, settings: Settings,
                 links: SelfLinks | None = None) -> None:
        self.store = store
        self.outbox = outbox
        self.settings = settings
        self.links = links
        """Signs $self_link (the lifecycle sets it at start, with the web pages' key)."""

    async def plan_of(self, account_id: str) -> Plan | None:
        try:
            return await self.store.get_plan(await self.store.account_plan(account_id))
        except NotFound:
            return None

    async def notify(self, what: Rule | Campaign, key: str, subscriber_id: str,
                     account_id: str, values: dict[str, str], now_ms: int,
                     event: events_pb2.Event | None = None, critical: bool = False,
                     offer: bool = False) -> bool:
        """Queues the messages of one rule (or campaign) for one subscriber, once per key.
        Returns whether they were queued now (False: this key was handled before)."""
        prefs = await contacts.load(self.store.redis, subscriber_id)
        plan = await self.plan_of(account_id)
        values = {**values, "subscriber": subscriber_id, "account": account_id,
                  "rule": what.name, "plan": plan.plan_id if plan else "",
                  "plan_name": plan.name if plan else "",
                  "currency": plan.currency if plan else ""}
        campaign = what.name if isinstance(what, Campaign) else ""
        offer_id, addon_ids = "", list[str]()
        if offer and plan is not None and plan.addons:
            offer_id = f"{what.name}:{key}:{subscriber_id}"
            addon_ids, values["offers"] = await make_offer(
                self.store.redis, offer_id, subscriber_id, account_id, plan, now_ms,
                campaign)
            values["offer_id"] = offer_id
        values.setdefault("offers", "")
        tpl = pick_template(what.templates, prefs.locale or self.settings.locale,
                            self.settings.locale)
        if self.links is not None and SELF_LINK in tpl.subject + tpl.text:
            values[SELF_LINK] = self.links.url(subscriber_id, now_ms, campaign)
        subject, text = render(tpl.subject, values), render(tpl.text, values)
        tz = prefs.timezone or (plan.timezone if plan else "") or self.settings.timezone
        due = now_ms if critical else quiet_until(now_ms, self.settings.quiet_hours, tz)
        messages = []
        opt_outs = set(prefs.opt_outs)
        for channel in channels_for(what.channels, prefs.preferred_channel, self.settings):
            to = {"webhook": self.settings.webhook.url if self.settings.webhook else "",
                  "email": prefs.email, "sms": prefs.phone}[channel]
            skip = ("opted out" if channel in opt_outs or
                    (isinstance(what, Campaign) and "campaigns" in opt_outs) else
                    "" if to else f"no {channel} address")
            msg_id = f"{what.name}:{key}:{subscriber_id}:{channel}"
            payload: dict[str, Any] = {
                "message_id": msg_id, "rule": what.name, "subscriber_id": subscriber_id,
                "account_id": account_id, "subject": subject, "text": text,
                "critical": critical, "offer_id": offer_id, "addon_ids": addon_ids,
                "event": json_format.MessageToDict(event) if event is not None else {},
                "campaign": what.name if isinstance(what, Campaign) else ""}
            messages.append({"id": msg_id, "event_id": event.event_id if event else key,
                             "rule": what.name, "channel": channel,
                             "subscriber": subscriber_id, "to": to, "subject": subject,
                             "text": text, "payload": payload, "critical": critical,
                             "attempts": 0, "offer_id": offer_id, "addon_ids": addon_ids,
                             "due_ms": due, "skip": skip})
        queued = await self.outbox.enqueue(f"{what.name}:{key}:{subscriber_id}", messages,
                                           self.settings.dedup_days * DAY_MS, now_ms)
        if queued and campaign:
            await results.count(self.store.redis, campaign, reach=1)
        return queued
