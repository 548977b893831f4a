"""Load tests (Locust suites gated on the audit table) and benchmarks of the serving stack."""
