//! The spend side: the durable ledger, its rollups, reports and budgets.
