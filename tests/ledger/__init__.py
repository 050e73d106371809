"""Tests of router.ledger: the ledger stores, durability and exports."""
