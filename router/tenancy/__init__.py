"""Who is asking and what they may spend: keys, tenants, rate limits, budgets and admission."""
