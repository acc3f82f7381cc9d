"""Billing: rated usage delivered, exported, re-rated and reconciled; what the streams keep."""
