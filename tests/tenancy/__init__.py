"""Tests of router.tenancy: keys, tenants, limits, budgets and admission."""
