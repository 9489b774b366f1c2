"""The partitions every domain shares, all UTC (DESIGN.md "Time and partitions")."""

import dagster as dg

START = "2025-01-01"

hourly = dg.HourlyPartitionsDefinition(start_date=f"{START}-00:00", timezone="UTC")
daily = dg.DailyPartitionsDefinition(start_date=START, timezone="UTC")
monthly = dg.MonthlyPartitionsDefinition(start_date=START, timezone="UTC")
