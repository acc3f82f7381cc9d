"""Prometheus metrics of the lifecycle process (and offer conversions, counted where BuyAddOn
runs)."""

from __future__ import annotations

from prometheus_client import Counter

NOTIFICATIONS = Counter("tollgate_notifications",
                        "Notifications by channel and outcome (queued, deferred by quiet hours, "
                        "skipped, sent, failed and retrying, dead)", ["channel", "outcome"])
TRANSITIONS = Counter("tollgate_state_transitions",
                      "Subscriber state changes made by the lifecycle, by new state", ["state"])
OFFERS_MADE = Counter("tollgate_offers_made", "Add-on offers sent in notifications")
OFFERS_BOUGHT = Counter("tollgate_offers_bought",
                        "Offers answered by a BuyAddOn with their offer_id, by add-on", ["addon"])
EVENTS_HANDLED = Counter("tollgate_lifecycle_events", "Events handled, by kind", ["kind"])
MONEY = Counter("tollgate_record_money_micros",
                "Money in the usage records the lifecycle read, by record kind (usage: charged; "
                "top_up: added; add_on: add-on prices)", ["kind"])
RECORDS = Counter("tollgate_records_read", "Usage records the lifecycle read, by kind", ["kind"])
