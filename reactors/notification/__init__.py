"""Notification: one mail to the customer per order event (shipped: tracking number; cancelled: reason)."""
