"""Prepaid wallets: an append-only ledger per organisation with an atomic debt limit (see ledger.py)."""
