-- Schemas of the warehouse: billing (movement, catalog, invoices, payments), usage (dbt models),
-- recon (what finance reads).
CREATE SCHEMA IF NOT EXISTS billing;
CREATE SCHEMA IF NOT EXISTS usage;
CREATE SCHEMA IF NOT EXISTS recon;
