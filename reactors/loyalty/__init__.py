"""Loyalty: a points ledger and balance per customer, one point per whole currency unit shipped."""
